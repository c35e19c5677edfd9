package cow

import (
	"fmt"
	"os"
	"path"
	"strconv"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Layer is one directory tree of a stack. All access goes through the
// directory descriptor of its root with paths relative to it, so names and
// paths as long as the kernel allows work at any depth.
type Layer struct {
	// Dir is the layer's root directory as given.
	Dir string
	fd  int
	dev uint64
	// inoHigh is ORed into the inode numbers of this layer so that objects
	// of layers on different filesystems never share one (like the
	// kernel's xino).
	inoHigh uint64
	upper   bool
	// committed marks a lower that was an upper (commit.go): it may hold
	// inode numbers recorded at copy-up.
	committed bool
	// changes counts the changes made in an upper through in: every
	// change to its namespace, and attribute changes too, which only
	// make a memory end sooner. What a lookup saw there is remembered
	// until the count next moves (Stack.upperDirAbsent).
	changes atomic.Uint64
}

func openLayer(dir string, upper bool) (*Layer, error) {
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open layer", Path: dir, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "stat layer", Path: dir, Err: err}
	}
	return &Layer{Dir: dir, fd: fd, dev: st.Dev, upper: upper}, nil
}

func (l *Layer) close() { unix.Close(l.fd) }

// String names the layer for messages.
func (l *Layer) String() string { return l.Dir }

// at returns a path usable with the *at system calls on l.fd; the root
// itself is ".".
func at(rel string) string {
	if rel == "" {
		return "."
	}
	return rel
}

func join(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

func split(rel string) (dir, name string) {
	d, n := path.Split(rel)
	if d != "" {
		d = d[:len(d)-1]
	}
	return d, n
}

func (l *Layer) lstat(rel string) (unix.Stat_t, error) {
	var st unix.Stat_t
	err := unix.Fstatat(l.fd, at(rel), &st, unix.AT_SYMLINK_NOFOLLOW)
	if err != nil {
		return st, l.err("stat", rel, err)
	}
	return st, nil
}

func (l *Layer) err(op, rel string, err error) error {
	return &os.PathError{Op: op, Path: path.Join(l.Dir, rel), Err: err}
}

// open opens rel in the layer without following a symlink in any component.
func (l *Layer) open(rel string, flags int, mode uint32) (int, error) {
	how := unix.OpenHow{
		Flags:   uint64(flags | unix.O_CLOEXEC | unix.O_NOFOLLOW),
		Mode:    uint64(mode & 0o7777),
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	}
	if flags&(unix.O_CREAT|unix.O_TMPFILE) == 0 {
		how.Mode = 0
	}
	if !l.upper && flags&unix.O_PATH == 0 {
		// Reading a lower must not change it, not even its atime.
		how.Flags |= unix.O_NOATIME
	}
	for {
		fd, err := unix.Openat2(l.fd, at(rel), &how)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EPERM && how.Flags&unix.O_NOATIME != 0 {
			// Only the owner (or root) may; read as the kernel
			// would then, with the atime updated.
			how.Flags &^= unix.O_NOATIME
			continue
		}
		if err != nil {
			return -1, l.err("open", rel, err)
		}
		return fd, nil
	}
}

// in runs fn with a descriptor of the directory that holds rel and rel's
// last name ("." for the root). The directory is reached without following
// any symlink, so that whatever changes through the mount meanwhile, fn
// cannot act outside the layer. Every change to a layer goes through in or
// open.
func (l *Layer) in(rel string, fn func(dirfd int, name string) error) error {
	if l.upper {
		// Counted once the change is made: a lookup that read the
		// count before it and did not see the change sees the count
		// move.
		defer l.changes.Add(1)
	}
	dir, name := split(rel)
	if dir == "" {
		return fn(l.fd, at(name))
	}
	fd, err := l.open(dir, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return fn(fd, name)
}

// intoUpper renames tmp from the work directory to rel in the upper.
func (s *Stack) intoUpper(tmp, rel string, flags uint) error {
	return s.upper.in(rel, func(d int, n string) error { return renameat2(s.work.fd, tmp, d, n, flags) })
}

// outOfUpper renames rel in the upper to tmp in the work directory.
func (s *Stack) outOfUpper(rel, tmp string, flags uint) error {
	return s.upper.in(rel, func(d int, n string) error { return renameat2(d, n, s.work.fd, tmp, flags) })
}

// renameUpper renames src to dst, both in the upper.
func (s *Stack) renameUpper(src, dst string, flags uint) error {
	return s.upper.in(src, func(sd int, sn string) error {
		return s.upper.in(dst, func(dd int, dn string) error { return renameat2(sd, sn, dd, dn, flags) })
	})
}

// unlink removes the non-directory rel.
func (l *Layer) unlink(rel string) error {
	return l.in(rel, func(d int, n string) error { return unix.Unlinkat(d, n, 0) })
}

// setTimes sets the atime and mtime of rel, not following a symlink.
func (l *Layer) setTimes(rel string, ts []unix.Timespec) error {
	return l.in(rel, func(d int, n string) error { return unix.UtimesNanoAt(d, n, ts, unix.AT_SYMLINK_NOFOLLOW) })
}

// procPath returns a path naming the object open as fd, for the xattr
// calls that have no descriptor form for O_PATH descriptors.
func procPath(fd int) string { return "/proc/self/fd/" + strconv.Itoa(fd) }

// withPath runs fn on a /proc path naming rel without following a symlink
// at rel itself.
func (l *Layer) withPath(rel string, fn func(p string) error) error {
	fd, err := l.open(rel, unix.O_PATH, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return fn(procPath(fd))
}

func (l *Layer) setxattr(rel, name string, val []byte) error {
	err := l.withPath(rel, func(p string) error { return unix.Setxattr(p, name, val, 0) })
	if err != nil {
		return fmt.Errorf("setxattr %s %s: %w", path.Join(l.Dir, rel), name, err)
	}
	return nil
}

// ino returns the merged inode number of the object st at rel in l.
func (s *Stack) ino(l *Layer, rel string, st *unix.Stat_t) uint64 {
	// user.* xattrs cannot be set on symlinks, so in userxattr mode a
	// copied-up symlink has none.
	if (l.upper || l.committed) && !(s.cfg.UserXattr && st.Mode&unix.S_IFMT == unix.S_IFLNK) {
		if v, err := l.getxattr(rel, s.inoXattr()); err == nil {
			if n, err := strconv.ParseUint(string(v), 10, 64); err == nil && n != 0 {
				return n
			}
		}
	}
	return st.Ino | l.inoHigh
}
