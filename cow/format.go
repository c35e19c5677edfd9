package cow

import (
	"errors"
	"fmt"
	"os"
	"path"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// This file is the only one that knows how whiteouts, opaque directories and
// the union's own metadata are encoded on disk.
//
// Written (kernel overlayfs, Documentation/filesystems/overlayfs.rst):
//   - whiteout: a character device with device number 0/0 and mode 0;
//   - opaque directory: xattr trusted.overlay.opaque=y, or user.overlay.opaque=y
//     in userxattr mode (no root).
//
// Also read, in any layer:
//   - ".wh.NAME": a whiteout for NAME (OCI image-spec layer.md#whiteouts, as
//     OCI layers unpack and as fuse-overlayfs writes without mknod);
//   - ".wh..wh..opq" inside a directory: the directory is opaque;
//   - the other mode's opaque xattr, and user.fuseoverlayfs.opaque=y
//     (fuse-overlayfs).
//
// The union's own state lives in the overlay xattr namespace
// (trusted.overlay., or user.overlay. in userxattr mode), which the kernel
// hides from users too, so a kernel mount of the upper does not show it:
//   - overlay.unionmount.ino on an upper object copied up from a lower: its
//     merged inode number in decimal, so st_ino survives copy-up and
//     remount;
//   - WORK/linkindex/INO: a hard link to the upper copy of a lower file that
//     has several names (st_nlink > 1), named after its merged inode number,
//     so the names not yet in the upper show the copy too, also after a
//     remount (the kernel keeps the same kind of index with index=on);
//   - overlay.unionmount.lowerlinks on such a copy: how many of its lower
//     names still show it through the index.
//
// Metadata-only copy-up (overlayfs.rst, "Metadata only copy up"), in the
// kernel's own encoding, written and read:
//   - overlay.metacopy with an empty value on a regular file: only its
//     metadata (owner, mode, times, xattrs, size) is in this layer; its
//     data is the regular file at the same path in the layers below it,
//     found as a lookup there finds it. The file itself is sparse: its
//     size is the data's, with no blocks of its own;
//   - overlay.redirect on such a file, set before it is renamed: the
//     absolute path ("/dir/name") of its data in the layers below, read
//     instead of its own path. A relative redirect (a name, as the kernel
//     may write for a rename within one directory) is read relative to
//     the file's directory. Redirects of directories are not read.
//
// A kernel mounts such an upper with metacopy=on (and redirect_dir=on for
// renamed files); without, it refuses the file (EPERM) rather than show its
// empty placeholder. Only a regular file with fewer allocated bytes than its
// size (st_blocks*512 < st_size) may be a metacopy file, so a lookup reads
// the xattr of those only; a copy-up that cannot make its placeholder so
// (xattrs that take a block of their own on ext4 or XFS, for a small file)
// copies the data instead.
//
// As in the kernel, a user's own xattrs in that namespace are escaped: the
// merged view's trusted.overlay.X is trusted.overlay.overlay.X on disk.

const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
)

// readOpaqueXattrs are the xattrs that, set to "y", make a directory opaque.
var readOpaqueXattrs = []string{
	"trusted.overlay.opaque",
	"user.overlay.opaque",
	"user.fuseoverlayfs.opaque",
}

// IsReservedName reports whether name would be read as a whiteout marker, so
// that users may not create it.
func IsReservedName(name string) bool {
	return strings.HasPrefix(name, whiteoutPrefix)
}

// ownPrefix is the xattr namespace of the union's markers and state.
func (s *Stack) ownPrefix() string {
	if s.cfg.UserXattr {
		return "user.overlay."
	}
	return "trusted.overlay."
}

// diskXattr returns the on-disk name of the xattr a user calls name, and
// false for a name the union keeps for itself.
func (s *Stack) diskXattr(name string) (string, bool) {
	own := s.ownPrefix()
	if strings.HasPrefix(name, own) {
		return own + "overlay." + name[len(own):], true
	}
	if slices.Contains(readOpaqueXattrs, name) {
		return "", false
	}
	return name, true
}

// userXattr returns the name a user sees for the on-disk xattr disk, and
// false for one of the union's own.
func (s *Stack) userXattr(disk string) (string, bool) {
	own := s.ownPrefix()
	if strings.HasPrefix(disk, own+"overlay.") {
		return own + disk[len(own+"overlay."):], true
	}
	if strings.HasPrefix(disk, own) || slices.Contains(readOpaqueXattrs, disk) {
		return "", false
	}
	return disk, true
}

func isWhiteout(st *unix.Stat_t) bool {
	return st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0
}

// whiteoutName returns the ".wh." marker name that hides name.
func whiteoutName(name string) string { return whiteoutPrefix + name }

// markerTarget reports whether a directory entry is a ".wh." marker, and the
// name it hides ("" for the opaque marker).
func markerTarget(name string) (string, bool) {
	if !strings.HasPrefix(name, whiteoutPrefix) {
		return "", false
	}
	if name == opaqueMarker {
		return "", true
	}
	return name[len(whiteoutPrefix):], true
}

func (s *Stack) opaqueXattr() string     { return s.ownPrefix() + "opaque" }
func (s *Stack) metacopyXattr() string   { return s.ownPrefix() + "metacopy" }
func (s *Stack) redirectXattr() string   { return s.ownPrefix() + "redirect" }
func (s *Stack) inoXattr() string        { return s.ownPrefix() + "unionmount.ino" }
func (s *Stack) lowerLinksXattr() string { return s.ownPrefix() + "unionmount.lowerlinks" }

// setxattrAt sets the xattr x of name in dirfd, not following a symlink.
func setxattrAt(dirfd int, name, x string, val []byte) error {
	fd, err := unix.Openat(dirfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Setxattr(procPath(fd), x, val, 0)
}

// mkWhiteout creates a whiteout named name in dirfd.
func mkWhiteout(dirfd int, name string) error {
	return unix.Mknodat(dirfd, name, unix.S_IFCHR, 0)
}

// isOpaque reports whether the directory at rel in layer l is opaque.
func (l *Layer) isOpaque(rel string) (bool, error) {
	opaque := false
	err := l.readXattrs(rel, func(x xattrSource) error {
		names, err := x.list()
		if err != nil {
			if ignorableXattrErr(err) {
				return nil
			}
			return err
		}
		for _, n := range names {
			if !slices.Contains(readOpaqueXattrs, n) {
				continue
			}
			v, err := x.get(n)
			if err == nil && string(v) == "y" {
				opaque = true
				return nil
			}
		}
		return nil
	})
	if err != nil || opaque {
		return opaque, err
	}
	_, err = l.lstat(join(rel, opaqueMarker))
	if err == nil {
		return true, nil
	}
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return false, nil
	}
	return false, err
}

// hasMarker reports whether layer l has a ".wh.NAME" whiteout for name in
// the directory dir.
func (l *Layer) hasMarker(dir, name string) bool {
	_, err := l.lstat(join(dir, whiteoutName(name)))
	return err == nil
}

// setOpaque marks the upper directory at rel opaque.
func (s *Stack) setOpaque(rel string) error {
	return s.upper.setxattr(rel, s.opaqueXattr(), []byte("y"))
}

// The functions below write the format for packages that build layer
// directories without a Stack (unpacking an OCI layer into a lower).

// MakeWhiteout creates, in the directory dirfd, the whiteout that hides
// name in the layers below.
func MakeWhiteout(dirfd int, name string) error {
	if err := mkWhiteout(dirfd, name); err != nil {
		return &os.PathError{Op: "mknod whiteout", Path: name, Err: err}
	}
	return nil
}

// MarkOpaque marks the directory name in dirfd opaque: it hides the
// directories of the same path in the layers below. userXattr selects
// user.overlay.opaque (no root needed) over trusted.overlay.opaque.
func MarkOpaque(dirfd int, name string, userXattr bool) error {
	x := "trusted.overlay.opaque"
	if userXattr {
		x = "user.overlay.opaque"
	}
	if err := setxattrAt(dirfd, name, x, []byte("y")); err != nil {
		return &os.PathError{Op: "mark opaque", Path: name, Err: err}
	}
	return nil
}

// OCI layer tars spell whiteouts as names (image-spec layer.md).
const (
	// OCIWhiteoutPrefix starts the name of an entry that deletes the
	// rest of its name from the layers below.
	OCIWhiteoutPrefix = whiteoutPrefix
	// OCIOpaqueMarker inside a directory makes it opaque.
	OCIOpaqueMarker = opaqueMarker
)

// fuseOpaqueMarker is a 0/0 character device that fuse-overlayfs creates
// inside a directory it makes opaque, beside the xattr and the
// ".wh..wh..opq" file.
const fuseOpaqueMarker = ".wh..opq"

// isOverlayXattr reports whether the on-disk xattr name is an overlay
// filesystem's own (the kernel's in either namespace, fuse-overlayfs's or
// ours, users' escaped ones included), never a property of the file.
func isOverlayXattr(name string) bool {
	return strings.HasPrefix(name, "trusted.overlay.") ||
		strings.HasPrefix(name, "user.overlay.") ||
		strings.HasPrefix(name, "user.fuseoverlayfs.")
}

// unreadableXattr reports whether the on-disk xattr name marks an object
// that only a kernel overlay mount can read whole: a directory renamed with
// redirect_dir (overlay.redirect names its lower origin) or a
// metadata-only copy-up (overlay.metacopy: the data is still below).
func unreadableXattr(name string) bool {
	switch name {
	case "trusted.overlay.redirect", "user.overlay.redirect",
		"trusted.overlay.metacopy", "user.overlay.metacopy":
		return true
	}
	return false
}

// Normalize rewrites the markers of a foreign upper in the encoding this
// file writes, so that a layer committed from it is one a kernel mounts:
// a ".wh.NAME" file becomes a 0/0 whiteout, and a directory marked opaque
// by ".wh..wh..opq", fuse-overlayfs's ".wh..opq" device or another
// namespace's opaque xattr gets this stack's opaque xattr instead. Kernel
// overlayfs cannot read the former and lists whiteouts inside an opaque
// directory of one layer (fuse-overlayfs#306). It walks the whole upper,
// so it is for an upper that is not mounted: an offline commit. It
// returns how many markers it rewrote.
func (s *Stack) Normalize() (int, error) {
	if s.upper == nil {
		return 0, &errRO
	}
	n := 0
	var walk func(rel string) error
	walk = func(rel string) error {
		ents, err := readDirents(s.upper, rel, unix.O_NOATIME)
		if err != nil {
			return err
		}
		opaque, err := s.upper.isOpaque(rel)
		if err != nil {
			return err
		}
		if opaque {
			if err := s.normalizeOpaque(rel); err != nil {
				return err
			}
		}
		for _, e := range ents {
			p := join(rel, e.name)
			st, err := s.upper.lstat(p)
			if err != nil {
				return err
			}
			target, marker := markerTarget(e.name)
			switch {
			case e.name == opaqueMarker || (opaque && (isWhiteout(&st) || marker)):
				// The opaque marker, or a whiteout inside an opaque
				// directory: it hides nothing more, and the kernel
				// would list it.
				if err := s.upper.unlink(p); err != nil {
					return err
				}
				n++
			case marker && target != "" && st.Mode&unix.S_IFMT == unix.S_IFREG:
				if _, err := s.upper.lstat(join(rel, target)); err == nil {
					// A real entry beats its marker.
				} else if err := s.upper.in(join(rel, target), mkWhiteout); err != nil {
					return err
				}
				if err := s.upper.unlink(p); err != nil {
					return err
				}
				n++
			case st.Mode&unix.S_IFMT == unix.S_IFDIR:
				if err := walk(p); err != nil {
					return err
				}
			}
		}
		return nil
	}
	err := walk("")
	if err != nil {
		return n, fmt.Errorf("normalize the upper's markers: %w", err)
	}
	return n, nil
}

// normalizeOpaque gives the opaque directory rel this stack's opaque xattr
// and removes the other opaque xattrs.
func (s *Stack) normalizeOpaque(rel string) error {
	if err := s.setOpaque(rel); err != nil {
		return err
	}
	for _, x := range readOpaqueXattrs {
		if x == s.opaqueXattr() {
			continue
		}
		err := s.upper.withPath(rel, func(p string) error { return unix.Removexattr(p, x) })
		if err != nil && !errors.Is(err, unix.ENODATA) && !ignorableXattrErr(err) {
			return err
		}
	}
	return nil
}

// mayBeMetacopy reports whether a file with the attributes st can be a
// metadata-only copy: a regular file with fewer allocated bytes than its
// size. Only these need the xattr read.
func mayBeMetacopy(st *unix.Stat_t) bool {
	return st.Mode&unix.S_IFMT == unix.S_IFREG && st.Size > 0 && st.Blocks*512 < st.Size
}

// metacopyOrigin reports whether the file rel in l, with attributes st, is
// a metadata-only copy, and the path of its data in the layers below:
// its redirect, or rel itself.
func (s *Stack) metacopyOrigin(l *Layer, rel string, st *unix.Stat_t) (string, bool) {
	if !mayBeMetacopy(st) {
		return "", false
	}
	if _, err := l.getxattr(rel, s.metacopyXattr()); err != nil {
		return "", false
	}
	v, err := l.getxattr(rel, s.redirectXattr())
	if err != nil {
		return rel, true
	}
	return redirectPath(rel, string(v)), true
}

// redirectPath returns the path a redirect xattr value names for the object
// at rel: absolute from the layers' root, or a name in rel's directory.
func redirectPath(rel, v string) string {
	if strings.HasPrefix(v, "/") {
		return strings.Trim(path.Clean(v), "/")
	}
	dir, _ := split(rel)
	return join(dir, v)
}

// setMetacopy marks the file tmp in the work directory a metadata-only
// copy whose data is at origin in the layers below; rel is where it will
// be placed.
func (s *Stack) setMetacopy(tmp, rel, origin string) error {
	if err := s.work.setxattr(tmp, s.metacopyXattr(), []byte{}); err != nil {
		return err
	}
	if origin != rel {
		return s.work.setxattr(tmp, s.redirectXattr(), []byte("/"+origin))
	}
	return nil
}

// setRedirect records, on the metadata-only copy rel in the upper, that its
// data is at origin in the layers below, as the kernel does before it
// renames one.
func (s *Stack) setRedirect(rel, origin string) error {
	return s.upper.setxattr(rel, s.redirectXattr(), []byte("/"+origin))
}

// MetacopyOrigin reports whether the regular file rel of the layer is a
// metadata-only copy (an empty overlay.metacopy xattr in either
// namespace), and then the path, relative to the root, of its data in the
// layers below: its overlay.redirect, or rel itself. Unlike a lookup in a
// stack it reads the xattrs of every regular file, so that a commit never
// takes a placeholder for data.
func (d *LayerDir) MetacopyOrigin(rel string) (string, bool, error) {
	var origin string
	var meta bool
	err := d.l.readXattrs(rel, func(x xattrSource) error {
		for _, ns := range []string{"trusted.overlay.", "user.overlay."} {
			if _, err := x.get(ns + "metacopy"); err != nil {
				if errors.Is(err, unix.ENODATA) || ignorableXattrErr(err) {
					continue
				}
				return err
			}
			meta, origin = true, rel
			if v, err := x.get(ns + "redirect"); err == nil {
				origin = redirectPath(rel, string(v))
			}
			return nil
		}
		return nil
	})
	if err != nil {
		return "", false, fmt.Errorf("read the metacopy xattr of %s: %w", path.Join(d.l.Dir, rel), err)
	}
	return origin, meta, nil
}
