package integration

import (
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// This file is the operation vocabulary of the differential tests: each op
// is a few system calls on paths relative to a mount root, reporting the
// errno and what it read.

// op is one operation. Which fields count depends on kind.
type op struct {
	kind  string
	path  string
	path2 string // rename/link destination
	data  string // bytes to write, symlink target, xattr value
	off   int64  // write offset, truncate length, utimes seconds
	mode  uint32
	uid   int
	gid   int
	flags int    // rename flags, xattr flags, utimes variant, open flags
	name  string // xattr name
}

// result is what an op returned: the errno (0 on success) and, for ops
// that read, what they read.
type result struct {
	errno unix.Errno
	out   string
}

func (r result) String() string {
	s := "ok"
	if r.errno != 0 {
		s = unix.ErrnoName(r.errno)
		if s == "" {
			s = r.errno.Error()
		}
	}
	if r.out != "" {
		s += " " + r.out
	}
	return s
}

// utimes variants, in op.flags.
const (
	utExplicit  = iota // atime = off-1000, mtime = off seconds after fixtureEpoch
	utNow              // both UTIME_NOW
	utOmitAtime        // atime UTIME_OMIT, mtime explicit
	utNoFollow         // explicit, AT_SYMLINK_NOFOLLOW
)

func (o op) String() string {
	var b strings.Builder
	b.WriteString(o.kind)
	fmt.Fprintf(&b, " %q", o.path)
	switch o.kind {
	case "rename", "link":
		fmt.Fprintf(&b, " %q", o.path2)
		if o.flags != 0 {
			fmt.Fprintf(&b, " flags=%s", renameFlagName(o.flags))
		}
	case "write", "create", "openwrite", "staleread":
		fmt.Fprintf(&b, " off=%d data=%q", o.off, o.data)
	case "extract":
		fmt.Fprintf(&b, " data=%q t=%d %d:%d %04o", o.data, o.off, o.uid, o.gid, o.mode)
	case "append", "truncwrite":
		fmt.Fprintf(&b, " data=%q", o.data)
	case "truncate":
		fmt.Fprintf(&b, " len=%d", o.off)
	case "symlink":
		fmt.Fprintf(&b, " -> %q", o.data)
	case "mkdir", "chmod", "mkfifo":
		fmt.Fprintf(&b, " %04o", o.mode)
	case "chown", "lchown":
		fmt.Fprintf(&b, " %d:%d", o.uid, o.gid)
	case "utimes":
		fmt.Fprintf(&b, " variant=%d t=%d", o.flags, o.off)
	case "setxattr":
		fmt.Fprintf(&b, " %s=%q flags=%d", o.name, o.data, o.flags)
	case "getxattr", "removexattr":
		fmt.Fprintf(&b, " %s", o.name)
	}
	return b.String()
}

func renameFlagName(f int) string {
	switch f {
	case unix.RENAME_NOREPLACE:
		return "NOREPLACE"
	case unix.RENAME_EXCHANGE:
		return "EXCHANGE"
	}
	return fmt.Sprint(f)
}

func errnoOf(err error) unix.Errno {
	if err == nil {
		return 0
	}
	var e unix.Errno
	if errors.As(err, &e) {
		return e
	}
	return unix.EIO
}

// run performs o under root.
func (o op) run(root string) result {
	p := filepath.Join(root, o.path)
	p2 := filepath.Join(root, o.path2)
	switch o.kind {
	case "create":
		return writeAt(p, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, o.mode, o.off, o.data)
	case "openwrite": // O_CREAT without O_EXCL or O_TRUNC
		return writeAt(p, unix.O_WRONLY|unix.O_CREAT, o.mode, o.off, o.data)
	case "write":
		return writeAt(p, unix.O_WRONLY, 0, o.off, o.data)
	case "truncwrite":
		return writeAt(p, unix.O_WRONLY|unix.O_TRUNC, 0, 0, o.data)
	case "append":
		return writeAt(p, unix.O_WRONLY|unix.O_APPEND, 0, -1, o.data)
	case "truncate":
		return result{errno: errnoOf(unix.Truncate(p, o.off))}
	case "extract":
		return extract(p, o)
	case "read":
		return readFile(p)
	case "staleread":
		return staleRead(p, o.off, o.data)
	case "unlink":
		return result{errno: errnoOf(unix.Unlink(p))}
	case "rmdir":
		return result{errno: errnoOf(unix.Rmdir(p))}
	case "mkdir":
		return result{errno: errnoOf(unix.Mkdir(p, o.mode))}
	case "rename":
		return result{errno: errnoOf(unix.Renameat2(unix.AT_FDCWD, p, unix.AT_FDCWD, p2, uint(o.flags)))}
	case "link":
		return result{errno: errnoOf(unix.Link(p, p2))}
	case "symlink":
		return result{errno: errnoOf(unix.Symlink(o.data, p))}
	case "readlink":
		buf := make([]byte, 4096)
		n, err := unix.Readlink(p, buf)
		if err != nil {
			return result{errno: errnoOf(err)}
		}
		return result{out: fmt.Sprintf("%q", buf[:n])}
	case "mkfifo":
		return result{errno: errnoOf(unix.Mkfifo(p, o.mode))}
	case "mknod":
		return result{errno: errnoOf(unix.Mknod(p, unix.S_IFCHR|o.mode, o.flags))}
	case "chmod":
		return result{errno: errnoOf(unix.Chmod(p, o.mode))}
	case "chown":
		return result{errno: errnoOf(unix.Chown(p, o.uid, o.gid))}
	case "lchown":
		return result{errno: errnoOf(unix.Lchown(p, o.uid, o.gid))}
	case "utimes":
		return utimes(p, o.flags, o.off)
	case "setxattr":
		return result{errno: errnoOf(unix.Lsetxattr(p, o.name, []byte(o.data), o.flags))}
	case "getxattr":
		v, err := getXattr(p, o.name)
		if err != nil {
			return result{errno: errnoOf(err)}
		}
		return result{out: fmt.Sprintf("%q", v)}
	case "removexattr":
		return result{errno: errnoOf(unix.Lremovexattr(p, o.name))}
	case "listxattr":
		names, err := listXattr(p)
		if err != nil {
			return result{errno: errnoOf(err)}
		}
		return result{out: "[" + strings.Join(names, " ") + "]"}
	case "readdir":
		ents, err := readDirents(p)
		if err != nil {
			return result{errno: errnoOf(err)}
		}
		var parts []string
		for _, e := range ents {
			parts = append(parts, e.name+":"+e.typ)
		}
		return result{out: "[" + strings.Join(parts, " ") + "]"}
	case "stat", "statfollow":
		var st unix.Stat_t
		var err error
		if o.kind == "stat" {
			err = unix.Lstat(p, &st)
		} else {
			err = unix.Stat(p, &st)
		}
		if err != nil {
			return result{errno: errnoOf(err)}
		}
		return result{out: statSummary(&st)}
	case "access":
		return result{errno: errnoOf(unix.Faccessat(unix.AT_FDCWD, p, uint32(o.mode), 0))}
	}
	panic("unknown op kind " + o.kind)
}

func statSummary(st *unix.Stat_t) string {
	s := fmt.Sprintf("%s %04o %d:%d", typeName(st.Mode), st.Mode&07777, st.Uid, st.Gid)
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		s += fmt.Sprintf(" size=%d nlink=%d", st.Size, st.Nlink)
	}
	return s
}

// writeAt opens p with flags (O_NONBLOCK added, so that FIFOs fail rather
// than block) and writes data at off, or at the end when off < 0.
func writeAt(p string, flags int, mode uint32, off int64, data string) result {
	fd, err := unix.Open(p, flags|unix.O_NONBLOCK|unix.O_CLOEXEC, mode)
	if err != nil {
		return result{errno: errnoOf(err)}
	}
	defer unix.Close(fd)
	if off < 0 {
		_, err = unix.Write(fd, []byte(data))
	} else {
		_, err = unix.Pwrite(fd, []byte(data), off)
	}
	return result{errno: errnoOf(err)}
}

// extract does to p what tar does to each file it extracts: it opens p
// for writing (creating it with mode 0600), writes o.data, and while the
// file is still open sets by name its times (o.off seconds after
// fixtureEpoch), owner (o.uid, o.gid) and mode (o.mode); then it closes
// it. It reports the first error.
func extract(p string, o op) result {
	fd, err := unix.Open(p, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return result{errno: errnoOf(err)}
	}
	defer unix.Close(fd)
	t := unix.NsecToTimespec(fixtureEpoch.Add(time.Duration(o.off) * time.Second).UnixNano())
	for _, step := range []func() error{
		func() error { _, err := unix.Write(fd, []byte(o.data)); return err },
		func() error { return unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{t, t}, 0) },
		func() error { return unix.Chown(p, o.uid, o.gid) },
		func() error { return unix.Chmod(p, o.mode) },
	} {
		if err := step(); err != nil {
			return result{errno: errnoOf(err)}
		}
	}
	return result{}
}

func readFile(p string) result {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return result{errno: errnoOf(err)}
	}
	defer unix.Close(fd)
	var all []byte
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Read(fd, buf)
		if err != nil {
			return result{errno: errnoOf(err)}
		}
		if n == 0 {
			break
		}
		all = append(all, buf[:n]...)
	}
	if len(all) > 64 {
		return result{out: fmt.Sprintf("%d bytes %q...", len(all), all[:32])}
	}
	return result{out: fmt.Sprintf("%q", all)}
}

// staleRead opens p read-only, then writes data at off through a second,
// writable descriptor (which copies a lower file up), and reads the whole
// file back through the first descriptor: it must see the write.
func staleRead(p string, off int64, data string) result {
	rfd, err := unix.Open(p, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return result{errno: errnoOf(err)}
	}
	defer unix.Close(rfd)
	r := writeAt(p, unix.O_WRONLY, 0, off, data)
	if r.errno != 0 {
		return result{errno: r.errno, out: "(second open/write)"}
	}
	buf := make([]byte, 4096)
	n, err := unix.Pread(rfd, buf, 0)
	if err != nil {
		return result{errno: errnoOf(err), out: "(read back)"}
	}
	return result{out: fmt.Sprintf("read back %q", buf[:n])}
}

func utimes(p string, variant int, secs int64) result {
	t := fixtureEpoch.Add(time.Duration(secs) * time.Second).UnixNano()
	mt := unix.NsecToTimespec(t)
	at := unix.NsecToTimespec(t - 1000*1e9)
	flags := 0
	switch variant {
	case utNow:
		at = unix.Timespec{Nsec: unix.UTIME_NOW}
		mt = unix.Timespec{Nsec: unix.UTIME_NOW}
	case utOmitAtime:
		at = unix.Timespec{Nsec: unix.UTIME_OMIT}
	case utNoFollow:
		flags = unix.AT_SYMLINK_NOFOLLOW
	}
	err := unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{at, mt}, flags)
	if err != nil {
		return result{errno: errnoOf(err)}
	}
	// Report the resulting times the way snapshots classify them.
	var st unix.Stat_t
	if flags != 0 {
		err = unix.Lstat(p, &st)
	} else {
		err = unix.Stat(p, &st)
	}
	if err != nil {
		return result{errno: errnoOf(err), out: "(stat after)"}
	}
	out := "mtime " + timeClass(st.Mtim.Nano())
	if !ignored("atime", "") {
		out = "atime " + timeClass(st.Atim.Nano()) + " " + out
	}
	return result{out: out}
}

func timeClass(ns int64) string {
	if ns < fixtureEpoch.Add(24*time.Hour).UnixNano() {
		return fmt.Sprint(ns)
	}
	return "new"
}

// opsString lists ops one a line, numbered, for failure messages.
func opsString(ops []op) string {
	var b strings.Builder
	for i, o := range ops {
		fmt.Fprintf(&b, "  %3d %s\n", i, o)
	}
	return b.String()
}

// sortedStrings returns a sorted copy.
func sortedStrings(in []string) []string {
	out := append([]string(nil), in...)
	sort.Strings(out)
	return out
}
