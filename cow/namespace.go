package cow

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Owner is the caller a new object is created for.
type Owner struct{ UID, GID uint32 }

// NewObject describes an object to create: its type and permission bits,
// the device number of a device node, or a symlink's target.
type NewObject struct {
	Mode   uint32
	Rdev   uint32
	Target string
}

func errReserved(rel string) error {
	return &os.PathError{Op: "create", Path: rel, Err: unix.EINVAL}
}

// newEntry makes a new entry name in the merged directory dir at dirRel:
// build creates it as name in the directory dirfd, cleaning up after itself
// if it fails. Where the upper has a whiteout of that name, the entry is built in
// the work directory and swapped in for the whiteout in one step, so a
// failure cannot bring the lower's object back; over means that, and a new
// directory must then be made opaque. The parent is copied up first.
func (s *Stack) newEntry(dir *Object, dirRel, name string, isDir bool,
	build func(dirfd int, name string, over bool) error) error {
	if s.upper == nil {
		return &errRO
	}
	if IsReservedName(name) {
		return errReserved(join(dirRel, name))
	}
	if err := s.ensureUpperDir(dir, dirRel); err != nil {
		return err
	}
	s.ns.Lock()
	defer s.ns.Unlock()
	rel := join(dirRel, name)
	// Built in place unless the name is taken in the upper, by another
	// object or by a whiteout.
	err := s.upper.in(rel, func(d int, n string) error { return build(d, n, false) })
	if !errors.Is(err, unix.EEXIST) {
		return err
	}
	if st, err := s.upper.lstat(rel); err != nil || !isWhiteout(&st) {
		return s.upper.err("create", rel, unix.EEXIST)
	}
	tmp := s.tmpName()
	if err := build(s.work.fd, tmp, true); err != nil {
		return err
	}
	if err := s.replaceWhiteout(tmp, rel, isDir); err != nil {
		removeAll(s.work, tmp)
		return err
	}
	return nil
}

// Create creates and opens a regular file name in the merged directory dir
// at dirRel. flags are open(2) flags. It returns the descriptor, the new
// object and its attributes, as Stat would.
func (s *Stack) Create(dir *Object, dirRel, name string, flags int, mode uint32, who Owner) (int, *Object, unix.Stat_t, error) {
	flags = flags&^(unix.O_TRUNC|unix.O_EXCL) | unix.O_CREAT | unix.O_EXCL | unix.O_CLOEXEC | unix.O_NOFOLLOW
	fd := -1
	err := s.newEntry(dir, dirRel, name, false, func(d int, n string, over bool) error {
		var err error
		if fd, err = unix.Openat(d, n, flags, mode); err != nil {
			return s.upper.err("create", join(dirRel, name), err)
		}
		if err := s.chownNew(d, n, dirRel, who, false, over); err != nil {
			unix.Close(fd)
			unix.Unlinkat(d, n, 0)
			return err
		}
		return nil
	})
	var st unix.Stat_t
	if err != nil {
		return -1, nil, st, err
	}
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, nil, st, s.upper.err("stat", join(dirRel, name), err)
	}
	o := s.createdObject(&st)
	s.FixStat(o, &st)
	return fd, o, st, nil
}

// newObject returns the object just created at rel in the upper.
func (s *Stack) newObject(rel string) (*Object, error) {
	st, err := s.upper.lstat(rel)
	if err != nil {
		return nil, err
	}
	return s.createdObject(&st), nil
}

// createdObject returns the object with attributes st just created in the
// upper; being new, it carries no inode number from a lower.
func (s *Stack) createdObject(st *unix.Stat_t) *Object {
	return &Object{Layer: s.upper, Mode: st.Mode, Ino: st.Ino | s.upper.inoHigh}
}

// chownNew gives a new object the caller as owner. As the kernel does, a
// setgid parent directory gives it its group, and a new directory its
// setgid bit too; the filesystem does that by itself for an object made in
// place, not for one built in the work directory (moved).
func (s *Stack) chownNew(dirfd int, name, dirRel string, who Owner, isDir, moved bool) error {
	if !s.root {
		return nil
	}
	var pst unix.Stat_t
	var err error
	if moved {
		pst, err = s.upper.lstat(dirRel)
	} else {
		err = unix.Fstat(dirfd, &pst) // the parent itself
	}
	if err != nil {
		return err
	}
	setgid := pst.Mode&unix.S_ISGID != 0
	uid, gid := int(who.UID), int(who.GID)
	if setgid {
		gid = int(pst.Gid)
	}
	if !moved && uid == 0 && (gid == 0 || setgid) {
		return nil // the daemon's already, group and all
	}
	if err := unix.Fchownat(dirfd, name, uid, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("chown new %s: %w", name, err)
	}
	if moved && isDir && setgid {
		var st unix.Stat_t
		if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
		return unix.Fchmodat(dirfd, name, st.Mode&0o7777|unix.S_ISGID, 0)
	}
	return nil
}

// Make creates a directory, device node, FIFO, socket or symlink name in
// the merged directory dir at dirRel.
func (s *Stack) Make(dir *Object, dirRel, name string, n NewObject, who Owner) (*Object, error) {
	if n.Mode&unix.S_IFMT == unix.S_IFCHR && n.Rdev == 0 {
		// It would be a whiteout: the kernel refuses it too.
		return nil, &os.PathError{Op: "mknod", Path: join(dirRel, name), Err: unix.EPERM}
	}
	isDir := n.Mode&unix.S_IFMT == unix.S_IFDIR
	err := s.newEntry(dir, dirRel, name, isDir, func(d int, nm string, over bool) error {
		if err := s.makeAt(d, nm, n); err != nil {
			return s.upper.err("create", join(dirRel, name), err)
		}
		err := s.chownNew(d, nm, dirRel, who, isDir, over)
		// A directory that replaces a whiteout is opaque, or the
		// lower's contents would show through it; elsewhere nothing
		// below has the name, and the kernel (6.18) sets no marker.
		if err == nil && isDir && over {
			err = setxattrAt(d, nm, s.opaqueXattr(), []byte("y"))
		}
		if err != nil {
			removeAt(d, nm)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return s.newObject(join(dirRel, name))
}

// replaceWhiteout moves tmp from the work directory over the whiteout at
// rel in one step. A directory cannot be renamed over a non-directory, so it
// is exchanged with the whiteout, which is then removed.
//
// Preconditions: s.ns is held.
func (s *Stack) replaceWhiteout(tmp, rel string, isDir bool) error {
	if !isDir {
		if err := s.intoUpper(tmp, rel, 0); err != nil {
			return s.upper.err("rename", rel, err)
		}
		return nil
	}
	if err := s.intoUpper(tmp, rel, unix.RENAME_EXCHANGE); err != nil {
		return s.upper.err("rename", rel, err)
	}
	unix.Unlinkat(s.work.fd, tmp, 0)
	return nil
}

func (s *Stack) makeAt(dirfd int, name string, n NewObject) error {
	switch n.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return unix.Mkdirat(dirfd, name, n.Mode&0o7777)
	case unix.S_IFLNK:
		return unix.Symlinkat(n.Target, dirfd, name)
	default:
		return unix.Mknodat(dirfd, name, n.Mode, int(n.Rdev))
	}
}

// ensureUpperDir makes sure the merged directory dir at rel exists in the
// upper.
func (s *Stack) ensureUpperDir(dir *Object, rel string) error {
	if s.upper == nil {
		return &errRO
	}
	if dir.Layer.upper {
		return nil
	}
	_, err := s.CopyUp(dir, rel, false)
	return err
}

// Link makes name in the merged directory dir at dirRel a new name for
// target (at targetRel), copying target up first.
func (s *Stack) Link(target *Object, targetRel string, dir *Object, dirRel, name string) (*Object, error) {
	if IsReservedName(name) {
		return nil, errReserved(join(dirRel, name)) // before copying up
	}
	t, err := s.CopyUp(target, targetRel, true)
	if err != nil {
		return nil, err
	}
	err = s.newEntry(dir, dirRel, name, false, func(d int, n string, _ bool) error {
		err := t.Layer.in(t.loc(targetRel), func(td int, tn string) error { return unix.Linkat(td, tn, d, n, 0) })
		if err != nil {
			return s.upper.err("link", join(dirRel, name), err)
		}
		return nil
	})
	return t, err
}

// Unlink removes the non-directory name, the object o, from the merged
// directory dir at dirRel, leaving a whiteout if a lower layer has the name.
func (s *Stack) Unlink(dir *Object, dirRel, name string, o *Object) error {
	return s.remove(dir, dirRel, name, o)
}

// Rmdir removes the directory name, the object o, from the merged directory
// dir at dirRel. It fails with ENOTEMPTY unless the merged directory is
// empty (whiteouts do not count).
func (s *Stack) Rmdir(dir *Object, dirRel, name string, o *Object) error {
	return s.remove(dir, dirRel, name, o)
}

func (s *Stack) remove(dir *Object, dirRel, name string, o *Object) error {
	if s.upper == nil {
		return &errRO
	}
	rel := join(dirRel, name)
	if err := s.ensureUpperDir(dir, dirRel); err != nil {
		return err
	}
	if err := s.copyUpLinked(o, rel); err != nil {
		return err
	}
	s.ns.Lock()
	defer s.ns.Unlock()
	if o.IsDir() {
		empty, err := s.IsEmpty(o, rel)
		if err != nil {
			return err
		}
		if !empty {
			return s.upper.err("rmdir", rel, unix.ENOTEMPTY)
		}
	}
	// A lower holds a lower object's name, and lowers do not change: it
	// needs a whiteout without asking them again.
	whiteout := o.Frozen()
	if !whiteout {
		var err error
		if whiteout, err = s.lowerHas(dir, dirRel, name); err != nil {
			return err
		}
	}
	st, err := s.upper.lstat(rel)
	inUpper := err == nil && !isWhiteout(&st)
	switch {
	case inUpper && whiteout:
		// Swap the upper entry for a whiteout in one step, then
		// remove it (a directory holds only whiteouts by now).
		tmp := s.tmpName()
		if err := s.whiteoutRename(rel, tmp); err != nil {
			return err
		}
		return removeAll(s.work, tmp)
	case inUpper:
		return removeAll(s.upper, rel)
	case whiteout:
		if err := s.upper.in(rel, mkWhiteout); err != nil {
			return s.upper.err("whiteout", rel, err)
		}
		if o.indexName != "" {
			return s.addLowerLinks(o.indexName, -1)
		}
	}
	return nil
}

// whiteoutRename moves the upper entry rel to tmp in the work directory and
// leaves a whiteout at rel, atomically.
//
// Preconditions: s.ns is held.
func (s *Stack) whiteoutRename(rel, tmp string) error {
	err := s.outOfUpper(rel, tmp, unix.RENAME_WHITEOUT)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EINVAL) {
		return s.upper.err("rename", rel, err)
	}
	// No RENAME_WHITEOUT on this filesystem: exchange with a whiteout
	// made in the work directory.
	if err := mkWhiteout(s.work.fd, tmp); err != nil {
		return s.work.err("whiteout", tmp, err)
	}
	if err := s.outOfUpper(rel, tmp, unix.RENAME_EXCHANGE); err != nil {
		unix.Unlinkat(s.work.fd, tmp, 0)
		return s.upper.err("rename", rel, err)
	}
	return nil
}
