package cow

import (
	"errors"
	"fmt"
	"path"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Open opens o at rel with open(2) flags. A write intent (write access or
// O_TRUNC) copies o up first; O_TRUNC skips copying the data it would
// discard. It returns the descriptor and o as it is now.
func (s *Stack) Open(o *Object, rel string, flags int) (int, *Object, error) {
	write := flags&unix.O_ACCMODE != unix.O_RDONLY || flags&unix.O_TRUNC != 0
	if write && !o.DataUpper() {
		c, err := s.CopyUp(o, rel, flags&unix.O_TRUNC == 0)
		if err != nil {
			return -1, nil, err
		}
		o = c
	}
	// O_DIRECT buffers come from the kernel's FUSE layer, not from the
	// caller, and need not be aligned: the backing file does without.
	flags &^= unix.O_CREAT | unix.O_EXCL | unix.O_NOCTTY | unix.O_DIRECT
	if o.meta {
		// A metadata-only copy is read from its data below.
		if o.data == nil {
			return -1, nil, errNoData(rel)
		}
		fd, err := o.data.open(o.dataRel, unix.O_RDONLY|flags&unix.O_NONBLOCK, 0)
		return fd, o, err
	}
	if !o.Layer.upper {
		flags = unix.O_RDONLY | flags&unix.O_NONBLOCK
	}
	fd, err := o.Layer.open(o.loc(rel), flags, 0)
	return fd, o, err
}

// AccessedDir moves the atime of the merged directory o at rel, when it is
// in the upper, as listing it through kernel overlayfs would: a listing
// served from the kernel's cache does not read it. Reading it lets the
// upper's filesystem apply its own rule (relatime, noatime).
func (s *Stack) AccessedDir(o *Object, rel string) {
	fd, err := o.Layer.open(rel, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return
	}
	var b [512]byte
	_, _ = unix.Getdents(fd, b[:])
	unix.Close(fd)
}

// Readlink returns the target of the symlink o at rel.
func (s *Stack) Readlink(o *Object, rel string) (string, error) {
	t, err := readlinkat(o.Layer.fd, o.loc(rel))
	if err != nil {
		return "", o.Layer.err("readlink", rel, err)
	}
	return t, nil
}

// Attr is a change of attributes; nil fields stay as they are.
type Attr struct {
	Mode     *uint32
	UID, GID *uint32
	Size     *uint64
	Atime    *unix.Timespec // may be UTIME_NOW
	Mtime    *unix.Timespec
	// FromHandle is a descriptor open on the object's file in the upper
	// (for writing, if the size changes) to make the changes through, or
	// -1.
	FromHandle int
}

// owner returns the owner and group to set, -1 for those that stay.
func (a *Attr) owner() (uid, gid int) {
	uid, gid = -1, -1
	if a.UID != nil {
		uid = int(*a.UID)
	}
	if a.GID != nil {
		gid = int(*a.GID)
	}
	return uid, gid
}

// times returns the atime and mtime to set, UTIME_OMIT for one that stays,
// or nil.
func (a *Attr) times() []unix.Timespec {
	if a.Atime == nil && a.Mtime == nil {
		return nil
	}
	ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_OMIT}}
	if a.Atime != nil {
		ts[0] = *a.Atime
	}
	if a.Mtime != nil {
		ts[1] = *a.Mtime
	}
	return ts
}

// Setattr changes the attributes of o at rel, copying it up first: only
// its metadata unless the size changes (metacopy.go). It returns o as it
// is now and its attributes after the change, as Stat would.
func (s *Stack) Setattr(o *Object, rel string, a Attr) (*Object, unix.Stat_t, error) {
	var st unix.Stat_t
	if a.Size == nil && !o.Layer.upper {
		c, err := s.CopyUpMeta(o, rel)
		if err != nil {
			return nil, st, err
		}
		o = c
	} else if a.Size != nil && !o.DataUpper() {
		// Truncating to zero needs no data.
		c, err := s.CopyUp(o, rel, *a.Size != 0)
		if err != nil {
			return nil, st, err
		}
		o = c
	}
	if o.meta {
		var unlock func()
		o, unlock = s.lockMeta(o, rel)
		defer unlock()
	}
	u := o.Layer
	loc := o.loc(rel)
	var err error
	if a.FromHandle >= 0 && o.DataUpper() {
		err = setattrFD(a.FromHandle, a, &st)
	} else {
		// One walk to the parent serves every change and the stat after.
		err = u.in(loc, func(d int, name string) error {
			return setattrAt(d, name, o.Mode&unix.S_IFMT == unix.S_IFLNK, a, &st)
		})
	}
	if err != nil {
		return nil, st, u.err("setattr", loc, err)
	}
	s.FixStat(o, &st)
	return o, st, nil
}

// setattrAt makes the changes a to name in the directory dirfd, not
// following a symlink, and then reads its attributes into st.
func setattrAt(dirfd int, name string, isLink bool, a Attr, st *unix.Stat_t) error {
	if a.UID != nil || a.GID != nil {
		uid, gid := a.owner()
		if err := unix.Fchownat(dirfd, name, uid, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("chown: %w", err)
		}
	}
	if a.Mode != nil && !isLink {
		if err := unix.Fchmodat(dirfd, name, *a.Mode&0o7777, 0); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
	}
	if a.Size != nil {
		fd, err := unix.Openat(dirfd, name, unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("truncate: %w", err)
		}
		err = unix.Ftruncate(fd, int64(*a.Size))
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("truncate: %w", err)
		}
	}
	if ts := a.times(); ts != nil {
		if err := unix.UtimesNanoAt(dirfd, name, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("utimes: %w", err)
		}
	}
	return unix.Fstatat(dirfd, name, st, unix.AT_SYMLINK_NOFOLLOW)
}

// setattrFD makes the changes a to the regular file open as fd, and then
// reads its attributes into st.
func setattrFD(fd int, a Attr, st *unix.Stat_t) error {
	if a.UID != nil || a.GID != nil {
		uid, gid := a.owner()
		if err := unix.Fchown(fd, uid, gid); err != nil {
			return fmt.Errorf("chown: %w", err)
		}
	}
	if a.Mode != nil {
		if err := unix.Fchmod(fd, *a.Mode&0o7777); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
	}
	if a.Size != nil {
		if err := unix.Ftruncate(fd, int64(*a.Size)); err != nil {
			return fmt.Errorf("truncate: %w", err)
		}
	}
	if ts := a.times(); ts != nil {
		if err := futimens(fd, ts); err != nil {
			return fmt.Errorf("utimes: %w", err)
		}
	}
	return unix.Fstat(fd, st)
}

// futimens sets the times of the file open as fd: utimensat(2) with a
// NULL path, which golang.org/x/sys has no call for.
func futimens(fd int, ts []unix.Timespec) error {
	_, _, e := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// Getxattr reads the xattr name of o at rel; the union's own are absent.
func (s *Stack) Getxattr(o *Object, rel, name string) ([]byte, error) {
	disk, ok := s.diskXattr(name)
	if !ok {
		return nil, unix.ENODATA
	}
	var v []byte
	err := o.Layer.readXattrs(o.loc(rel), func(x xattrSource) error {
		var err error
		v, err = x.get(disk)
		return err
	})
	return v, err
}

// Listxattr lists the xattrs of o at rel, except the union's own.
func (s *Stack) Listxattr(o *Object, rel string) ([]string, error) {
	var names []string
	err := o.Layer.readXattrs(o.loc(rel), func(x xattrSource) error {
		all, err := x.list()
		for _, n := range all {
			if u, ok := s.userXattr(n); ok {
				names = append(names, u)
			}
		}
		return err
	})
	return names, err
}

// Setxattr sets the xattr name of o at rel, copying it up first. The
// union's own xattrs cannot be set.
func (s *Stack) Setxattr(o *Object, rel, name string, val []byte, flags int) (*Object, error) {
	return s.changeXattr(o, rel, name, func(p, disk string) error { return unix.Setxattr(p, disk, val, flags) })
}

// Removexattr removes the xattr name of o at rel, copying it up first
// unless o has no such xattr.
func (s *Stack) Removexattr(o *Object, rel, name string) (*Object, error) {
	if s.upper == nil {
		return nil, &errRO
	}
	if !o.Layer.upper {
		if _, err := s.Getxattr(o, rel, name); err != nil {
			return nil, err
		}
	}
	return s.changeXattr(o, rel, name, func(p, disk string) error { return unix.Removexattr(p, disk) })
}

func (s *Stack) changeXattr(o *Object, rel, name string, change func(p, disk string) error) (*Object, error) {
	disk, ok := s.diskXattr(name)
	if !ok {
		return nil, fmt.Errorf("xattr %s: %w", name, unix.EPERM)
	}
	if s.upper == nil {
		return nil, &errRO
	}
	if !o.Layer.upper {
		c, err := s.CopyUpMeta(o, rel)
		if err != nil {
			return nil, err
		}
		o = c
	}
	if o.meta {
		var unlock func()
		o, unlock = s.lockMeta(o, rel)
		defer unlock()
	}
	err := o.Layer.withPath(o.loc(rel), func(p string) error { return change(p, disk) })
	if err != nil {
		return nil, fmt.Errorf("xattr %s on %s: %w", name, path.Join(o.Layer.Dir, o.loc(rel)), err)
	}
	if o.meta {
		return s.keepMeta(o, rel)
	}
	return o, nil
}

// Fsyncdir flushes the upper directory rel, if there is one.
func (s *Stack) Fsyncdir(rel string) error {
	if s.upper == nil || s.cfg.Volatile {
		return nil
	}
	fd, err := s.upper.open(rel, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Fsync(fd)
}

// Tmpfile creates an unnamed file (O_TMPFILE) in the merged directory dir
// at rel, for LinkTmpfile to name later.
func (s *Stack) Tmpfile(dir *Object, rel string, flags int, mode uint32, who Owner) (int, *Object, error) {
	if err := s.ensureUpperDir(dir, rel); err != nil {
		return -1, nil, err
	}
	flags = flags&^(unix.O_CREAT|unix.O_EXCL|unix.O_DIRECTORY) | unix.O_TMPFILE
	fd, err := s.upper.open(rel, flags, mode)
	if err != nil {
		return -1, nil, err
	}
	var st unix.Stat_t
	err = unix.Fstat(fd, &st)
	if err == nil && s.root {
		err = unix.Fchown(fd, int(who.UID), int(who.GID))
	}
	if err != nil {
		unix.Close(fd)
		return -1, nil, err
	}
	return fd, s.createdObject(&st), nil
}

// LinkTmpfile gives the O_TMPFILE file open as fd (the object o) the name
// name in the merged directory dir at dirRel.
func (s *Stack) LinkTmpfile(fd int, o *Object, dir *Object, dirRel, name string) (*Object, error) {
	err := s.newEntry(dir, dirRel, name, false, func(d int, n string, _ bool) error {
		if err := unix.Linkat(unix.AT_FDCWD, procPath(fd), d, n, unix.AT_SYMLINK_FOLLOW); err != nil {
			return s.upper.err("link", join(dirRel, name), err)
		}
		return nil
	})
	return o, err
}
