package cow

import (
	"errors"
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
//   - user.fuseoverlayfs.opaque=y: fuse-overlayfs's opaque marker.
//
// The union's own state, invisible through the merged view:
//   - trusted.unionmount.ino (user.unionmount.ino in userxattr mode): the
//     merged inode number of an object copied up from a lower layer, in
//     decimal, so st_ino survives copy-up and remount.
//   - WORK/linkindex/INO: a hard link to the upper copy of a lower file that
//     has several names (st_nlink > 1), named after its merged inode number,
//     so the names not yet in the upper show the copy too, also after a
//     remount (the kernel keeps the same kind of index with index=on).
//   - trusted.unionmount.lowerlinks (user.* in userxattr mode) on such a
//     copy: how many of its lower names still show it through the index.

const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
)

var readOpaqueXattrs = []string{
	"trusted.overlay.opaque",
	"user.overlay.opaque",
	"user.fuseoverlayfs.opaque",
}

// privateXattrPrefixes are the xattr namespaces the union interprets; they are
// hidden from and unsettable through the merged view and never copied up.
var privateXattrPrefixes = []string{
	"trusted.overlay.",
	"user.overlay.",
	"user.fuseoverlayfs.",
	"trusted.unionmount.",
	"user.unionmount.",
}

// IsReservedName reports whether name would be read as a whiteout marker, so
// that users may not create it.
func IsReservedName(name string) bool {
	return strings.HasPrefix(name, whiteoutPrefix)
}

// IsPrivateXattr reports whether the xattr name belongs to the union itself.
func IsPrivateXattr(name string) bool {
	for _, p := range privateXattrPrefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
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

func (s *Stack) opaqueXattr() string {
	if s.cfg.UserXattr {
		return "user.overlay.opaque"
	}
	return "trusted.overlay.opaque"
}

func (s *Stack) lowerLinksXattr() string {
	if s.cfg.UserXattr {
		return "user.unionmount.lowerlinks"
	}
	return "trusted.unionmount.lowerlinks"
}

func (s *Stack) inoXattr() string {
	if s.cfg.UserXattr {
		return "user.unionmount.ino"
	}
	return "trusted.unionmount.ino"
}

// mkWhiteout creates a whiteout named name in dirfd.
func mkWhiteout(dirfd int, name string) error {
	return unix.Mknodat(dirfd, name, unix.S_IFCHR, 0)
}

// isOpaque reports whether the directory at rel in layer l is opaque.
func (l *Layer) isOpaque(rel string) (bool, error) {
	opaque := false
	err := l.withPath(rel, func(p string) error {
		names, err := listxattrPath(p)
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
			v, err := getxattrPath(p, n)
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
