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

// This file reads layer directories that are not part of a mounted stack,
// for committing an upper as a layer (package layer): one layer on its own
// (LayerDir) and the merged view of a stack of lowers (LowerView).

// LayerDir is one layer directory opened for reading on its own: an upper
// written by unionmount, kernel overlayfs or fuse-overlayfs, or a lower
// unpacked from an OCI layer. It reads every whiteout and opaque encoding of
// format.go and reports each fact once. Every path is relative to the
// layer's root and is resolved beneath it without following symlinks.
type LayerDir struct {
	l *Layer
}

// LayerEntry is one name of a layer directory.
type LayerEntry struct {
	Name string
	// Whiteout is set when the layer hides Name in the layers below and
	// has nothing of its own there; Stat is then zero.
	Whiteout bool
	// Stat is the entry's lstat.
	Stat unix.Stat_t
}

// Xattr is an extended attribute.
type Xattr struct {
	Name  string
	Value []byte
}

// OpenLayerDir opens the layer directory dir for reading.
func OpenLayerDir(dir string) (*LayerDir, error) {
	l, err := openLayer(dir, false)
	if err != nil {
		return nil, err
	}
	return &LayerDir{l: l}, nil
}

// Close releases the layer's descriptor.
func (d *LayerDir) Close() error {
	d.l.close()
	return nil
}

// Dir returns the layer's root directory as given.
func (d *LayerDir) Dir() string { return d.l.Dir }

// ReadDir lists the directory at rel ("" for the root), sorted by name,
// with the markers folded away: a name hidden by a 0/0 character device, a
// ".wh.NAME" file or both is one entry with Whiteout set, unless the layer
// also has a real NAME, which then wins (the marker only hid the name
// below). Marker names are never entries. opaque reports whether the
// directory hides the directories of the same path below: an opaque xattr
// set to "y", a ".wh..wh..opq" file, fuse-overlayfs's ".wh..opq" device, or
// a ".wh.NAME" beside it in its parent (how an OCI layer replaces a
// directory explicitly). A directory renamed with redirect_dir is refused
// with an error wrapping ENOTSUP.
func (d *LayerDir) ReadDir(rel string) (entries []LayerEntry, opaque bool, err error) {
	fd, err := d.l.open(rel, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, false, err
	}
	defer unix.Close(fd)
	ents, err := direntsOf(fd)
	if err != nil {
		return nil, false, d.l.err("readdir", rel, err)
	}
	if opaque, err = d.dirXattrs(fd, rel); err != nil {
		return nil, false, err
	}
	hidden := map[string]bool{}
	for _, e := range ents {
		if e.name == opaqueMarker {
			opaque = true
			continue
		}
		var st unix.Stat_t
		if e.typ == unix.DT_UNKNOWN || e.typ == unix.DT_CHR || !IsReservedName(e.name) {
			if err := unix.Fstatat(fd, e.name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				if errors.Is(err, unix.ENOENT) {
					continue // removed meanwhile
				}
				return nil, false, d.l.err("stat", join(rel, e.name), err)
			}
		}
		if target, ok := markerTarget(e.name); ok {
			switch {
			case e.name == fuseOpaqueMarker && isWhiteout(&st):
				opaque = true
			case target != "" && !IsReservedName(target):
				hidden[target] = true
			}
			// Anything else (a bare ".wh.", AUFS's own ".wh..wh.*"
			// files) names nothing a layer can hold.
			continue
		}
		if isWhiteout(&st) {
			hidden[e.name] = true
			continue
		}
		entries = append(entries, LayerEntry{Name: e.name, Stat: st})
	}
	for _, e := range entries {
		delete(hidden, e.Name)
	}
	for name := range hidden {
		entries = append(entries, LayerEntry{Name: name, Whiteout: true})
	}
	slices.SortFunc(entries, func(a, b LayerEntry) int { return strings.Compare(a.Name, b.Name) })
	if !opaque && rel != "" {
		dir, name := split(rel)
		if _, err := d.Lstat(join(dir, whiteoutName(name))); err == nil {
			opaque = true
		} else if !errors.Is(err, unix.ENOENT) {
			return nil, false, err
		}
	}
	return entries, opaque, nil
}

// dirXattrs reads the xattrs of the directory open as fd at rel: whether
// one makes it opaque, and an error if one marks a redirect.
func (d *LayerDir) dirXattrs(fd int, rel string) (opaque bool, err error) {
	names, err := sized(1024, func(buf []byte) (int, error) { return unix.Flistxattr(fd, buf) })
	if err != nil {
		if ignorableXattrErr(err) {
			return false, nil
		}
		return false, d.l.err("listxattr", rel, err)
	}
	for _, n := range strings.Split(string(names), "\x00") {
		if unreadableXattr(n) {
			return false, d.unreadable(rel, n)
		}
		if !opaque && slices.Contains(readOpaqueXattrs, n) {
			v, err := sized(16, func(buf []byte) (int, error) { return unix.Fgetxattr(fd, n, buf) })
			opaque = err == nil && string(v) == "y"
		}
	}
	return opaque, nil
}

func (d *LayerDir) unreadable(rel, xattr string) error {
	return fmt.Errorf("%s carries %s: written with redirect_dir/metacopy, which commit cannot read: %w",
		path.Join(d.l.Dir, rel), xattr, unix.ENOTSUP)
}

// Lstat returns the attributes of rel, not following a symlink.
func (d *LayerDir) Lstat(rel string) (unix.Stat_t, error) {
	var st unix.Stat_t
	err := d.l.in(rel, func(dirfd int, name string) error {
		return unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	})
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			return st, err
		}
		return st, d.l.err("stat", rel, err)
	}
	return st, nil
}

// Open opens the regular file rel for reading. Any other type is refused
// with an error wrapping EINVAL (a FIFO is never opened, so it cannot
// block).
func (d *LayerDir) Open(rel string) (*os.File, error) {
	fd, err := d.l.open(rel, unix.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, d.l.err("stat", rel, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, d.l.err("open", rel, fmt.Errorf("not a regular file: %w", unix.EINVAL))
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, d.l.err("open", rel, err)
	}
	return os.NewFile(uintptr(fd), path.Join(d.l.Dir, rel)), nil
}

// Readlink returns the target of the symlink rel.
func (d *LayerDir) Readlink(rel string) (string, error) {
	var t string
	err := d.l.in(rel, func(dirfd int, name string) error {
		var err error
		t, err = readlinkat(dirfd, name)
		return err
	})
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			return "", err
		}
		return "", d.l.err("readlink", rel, err)
	}
	return t, nil
}

// Xattrs returns the xattrs of rel that belong in a layer, sorted by name,
// without empty values (an empty PAX record would delete the xattr):
//
//   - kept: user.*, trusted.*, security.capability, security.ima and the
//     POSIX ACLs (system.posix_acl_access and _default): the file's own
//     data, portable to another machine;
//   - dropped: every overlay filesystem's own xattrs (trusted.overlay.*,
//     user.overlay.*, user.fuseoverlayfs.*), what rootless container tools
//     keep for themselves (user.rootlesscontainers, user.containers.*),
//     and the host's labels and policy: security.selinux and every other
//     security.* (LSM labels, EVM), system.nfs4_acl and unknown namespaces.
//
// Anything but a regular file carrying overlay.redirect or
// overlay.metacopy (in either namespace; a directory renamed with
// redirect_dir) is refused with an error wrapping ENOTSUP: its content is
// partly in the layers below. A regular file may carry them: it is a
// metadata-only copy (see MetacopyOrigin), whose data a caller reads from
// the layers below.
func (d *LayerDir) Xattrs(rel string) ([]Xattr, error) {
	var out []Xattr
	err := d.l.withPath(rel, func(p string) error {
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			return d.l.err("stat", rel, err)
		}
		isRegular := st.Mode&unix.S_IFMT == unix.S_IFREG
		names, err := listxattrAt(p, true)
		if err != nil {
			if ignorableXattrErr(err) {
				return nil
			}
			return fmt.Errorf("listxattr %s: %w", path.Join(d.l.Dir, rel), err)
		}
		for _, n := range names {
			if unreadableXattr(n) && !isRegular {
				return d.unreadable(rel, n)
			}
			if !layerXattr(n) {
				continue
			}
			v, err := getxattrAt(p, n, true)
			if errors.Is(err, unix.ENODATA) {
				continue // removed meanwhile
			}
			if err != nil {
				return fmt.Errorf("getxattr %s %s: %w", path.Join(d.l.Dir, rel), n, err)
			}
			if len(v) > 0 {
				out = append(out, Xattr{Name: n, Value: v})
			}
		}
		return nil
	})
	slices.SortFunc(out, func(a, b Xattr) int { return strings.Compare(a.Name, b.Name) })
	return out, err
}

// layerXattr reports whether the xattr name belongs in a layer; see
// LayerDir.Xattrs.
func layerXattr(name string) bool {
	if isOverlayXattr(name) {
		return false
	}
	switch {
	case strings.HasPrefix(name, "user."):
		return name != "user.rootlesscontainers" && !strings.HasPrefix(name, "user.containers.")
	case strings.HasPrefix(name, "trusted."):
		return true
	}
	switch name {
	case "security.capability", "security.ima", "system.posix_acl_access", "system.posix_acl_default":
		return true
	}
	return false
}

// LowerView is the merged read-only view of a stack of lower layers, as a
// union over them shows it with no upper: what a changeset is a change of.
// A view of no lowers is empty.
type LowerView struct {
	s *Stack // nil for no lowers
}

// OpenLowerView opens the merged view of lowers, top-most first.
func OpenLowerView(lowers []string) (*LowerView, error) {
	if len(lowers) == 0 {
		return &LowerView{}, nil
	}
	s, err := Open(Config{Lowers: lowers})
	if err != nil {
		return nil, err
	}
	return &LowerView{s: s}, nil
}

// Close releases the layers' descriptors.
func (v *LowerView) Close() error {
	if v.s == nil {
		return nil
	}
	return v.s.Close()
}

// Root returns the view's root directory, nil for an empty view.
func (v *LowerView) Root() (*Object, error) {
	if v.s == nil {
		return nil, nil
	}
	return v.s.Root()
}

// Lookup returns what the view shows at name in the directory dir at
// dirRel, or nil when it shows nothing there (also when dir is nil or not
// a directory).
func (v *LowerView) Lookup(dir *Object, dirRel, name string) (*Object, error) {
	if v.s == nil || dir == nil || !dir.IsDir() {
		return nil, nil
	}
	o, err := v.s.Lookup(dir, dirRel, name)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return nil, nil
	}
	return o, err
}

// LookupPath returns what the view shows at rel (slash-separated,
// relative to the root; "" is the root), or nil when it shows nothing.
func (v *LowerView) LookupPath(rel string) (*Object, error) {
	o, err := v.Root()
	if err != nil || rel == "" {
		return o, err
	}
	dirRel := ""
	for name := range strings.SplitSeq(rel, "/") {
		if name == "" {
			continue
		}
		if o, err = v.Lookup(o, dirRel, name); o == nil || err != nil {
			return nil, err
		}
		dirRel = join(dirRel, name)
	}
	return o, nil
}

// OpenFile opens for reading the data of the regular file the view shows
// at rel (for a metadata-only copy, its data below). Nothing there, or no
// data, is an error wrapping ENOENT; another type one wrapping EINVAL.
func (v *LowerView) OpenFile(rel string) (*os.File, error) {
	o, err := v.LookupPath(rel)
	if err != nil {
		return nil, err
	}
	if o == nil {
		return nil, &os.PathError{Op: "open", Path: rel, Err: fmt.Errorf("not in the lower layers: %w", unix.ENOENT)}
	}
	if o.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, &os.PathError{Op: "open", Path: rel, Err: fmt.Errorf("not a regular file: %w", unix.EINVAL)}
	}
	fd, _, err := v.s.Open(o, rel, unix.O_RDONLY)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), path.Join(o.Layer.Dir, rel)), nil
}

// Readdir lists the directory dir at rel as the view shows it (see
// Stack.Readdir); nothing when dir is nil or not a directory.
func (v *LowerView) Readdir(dir *Object, rel string) ([]DirEntry, error) {
	if v.s == nil || dir == nil || !dir.IsDir() {
		return nil, nil
	}
	return v.s.readdir(dir, rel, unix.O_NOATIME)
}
