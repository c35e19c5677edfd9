package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The permission tests run system calls as an unprivileged uid, in a helper
// process, against a plain directory of the host filesystem (the oracle; ext4
// on the test machines) and against a union whose lower is an identical
// tree, and require the same errnos from both.

const (
	permUID   = 65534 // nobody: the unprivileged caller
	permGID   = 65534
	permOther = 1000 // owner of "someone else's" files; permUID is not in its group
)

var permTrace = flag.Bool("perm.trace", false, "log every permission op with its results on ext4 and on the union")

// permHelperEnv carries a permRequest (JSON) to the helper process.
const permHelperEnv = "UNIONMOUNT_PERM_HELPER"

// The helper is this test binary run again as the unprivileged uid. It
// takes over in init, before TestMain, because TestMain builds unionmount
// with the go command, which the unprivileged uid cannot run (no access to
// root's module cache), and the helper does not need it.
func init() {
	req := os.Getenv(permHelperEnv)
	if req == "" {
		return
	}
	os.Exit(permHelperMain(req))
}

// permOp is one system call the helper makes. Paths are relative to the
// request's root.
type permOp struct {
	Kind  string `json:"kind"`
	Path  string `json:"path"`
	Path2 string `json:"path2,omitempty"`
	Flags int    `json:"flags,omitempty"`
	Mode  uint32 `json:"mode,omitempty"`
	UID   int    `json:"uid,omitempty"`
	GID   int    `json:"gid,omitempty"`
	Name  string `json:"name,omitempty"` // xattr name
	Data  string `json:"data,omitempty"` // file data, xattr value, symlink target

	want string // expected errno name on ext4, or "" if it depends on the host
}

func (o permOp) String() string {
	s := o.Kind + " " + o.Path
	if o.Path2 != "" {
		s += " " + o.Path2
	}
	switch o.Kind {
	case "open":
		s += " " + permOpenFlags(o.Flags)
	case "chmod", "mkdir", "create", "mkfifo":
		s += fmt.Sprintf(" %#o", o.Mode)
	case "mknodchr":
		s += fmt.Sprintf(" %#o %d:%d", o.Mode, unix.Major(uint64(o.Flags)), unix.Minor(uint64(o.Flags)))
	case "chown":
		s += fmt.Sprintf(" %d:%d", o.UID, o.GID)
	case "access":
		s += fmt.Sprintf(" mode=%d", o.Mode)
	case "utimes":
		if o.Flags != 0 {
			s += " now"
		} else {
			s += " explicit"
		}
	case "setxattr", "getxattr", "removexattr":
		s += " " + o.Name
	case "truncate":
		s += fmt.Sprintf(" %d", o.Flags)
	}
	return s
}

func permOpenFlags(fl int) string {
	var parts []string
	switch fl & unix.O_ACCMODE {
	case unix.O_RDONLY:
		parts = append(parts, "O_RDONLY")
	case unix.O_WRONLY:
		parts = append(parts, "O_WRONLY")
	case unix.O_RDWR:
		parts = append(parts, "O_RDWR")
	}
	for _, f := range []struct {
		bit  int
		name string
	}{{unix.O_CREAT, "O_CREAT"}, {unix.O_EXCL, "O_EXCL"}, {unix.O_TRUNC, "O_TRUNC"}, {unix.O_NOATIME, "O_NOATIME"}} {
		if fl&f.bit != 0 {
			parts = append(parts, f.name)
		}
	}
	return strings.Join(parts, "|")
}

// permResult is the outcome of one permOp: the errno name ("OK" for
// success) and, for ops that observe something, what they saw.
type permResult struct {
	Errno string `json:"errno"`
	Info  string `json:"info,omitempty"`
}

func (r permResult) String() string {
	if r.Info == "" {
		return r.Errno
	}
	return r.Errno + " (" + r.Info + ")"
}

type permRequest struct {
	Root string   `json:"root"`
	Ops  []permOp `json:"ops"`
}

type permReply struct {
	UID     int          `json:"uid"`
	GID     int          `json:"gid"`
	Groups  []int        `json:"groups"`
	Results []permResult `json:"results"`
}

// permHelperMain runs in the helper process: it performs the request's ops
// in order and prints a permReply on stdout.
func permHelperMain(req string) int {
	var r permRequest
	if err := json.Unmarshal([]byte(req), &r); err != nil {
		fmt.Fprintln(os.Stderr, "perm helper:", err)
		return 2
	}
	unix.Umask(0o022)
	groups, _ := unix.Getgroups()
	reply := permReply{UID: unix.Getuid(), GID: unix.Getgid(), Groups: groups}
	for _, o := range r.Ops {
		reply.Results = append(reply.Results, o.run(r.Root))
	}
	if err := json.NewEncoder(os.Stdout).Encode(reply); err != nil {
		fmt.Fprintln(os.Stderr, "perm helper:", err)
		return 2
	}
	return 0
}

func permErrno(err error) string {
	if err == nil {
		return "OK"
	}
	var e unix.Errno
	if errors.As(err, &e) {
		if n := unix.ErrnoName(e); n != "" {
			return n
		}
		return fmt.Sprintf("errno %d", int(e))
	}
	return "error: " + err.Error()
}

func permStatInfo(st *unix.Stat_t) string {
	s := fmt.Sprintf("mode=%#o uid=%d gid=%d", st.Mode, st.Uid, st.Gid)
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		s += fmt.Sprintf(" size=%d nlink=%d", st.Size, st.Nlink)
	}
	return s
}

// run performs o in the helper process.
func (o permOp) run(root string) permResult {
	p := filepath.Join(root, o.Path)
	p2 := filepath.Join(root, o.Path2)
	res := func(err error) permResult { return permResult{Errno: permErrno(err)} }
	switch o.Kind {
	case "stat":
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return res(err)
		}
		return permResult{Errno: "OK", Info: permStatInfo(&st)}
	case "access":
		return res(unix.Faccessat(unix.AT_FDCWD, p, o.Mode, 0))
	case "readdir":
		return permReaddir(p)
	case "open":
		fd, err := unix.Open(p, o.Flags|unix.O_CLOEXEC, o.Mode)
		if err == nil {
			unix.Close(fd)
		}
		return res(err)
	case "create":
		return permWrite(p, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, o.Mode, o.Data)
	case "write": // at offset 0, without truncating
		return permWrite(p, unix.O_WRONLY, 0, o.Data)
	case "read":
		data, err := os.ReadFile(p)
		if err != nil {
			return res(err)
		}
		return permResult{Errno: "OK", Info: fmt.Sprintf("%q", data)}
	case "mkdir":
		return res(unix.Mkdir(p, o.Mode))
	case "rmdir":
		return res(unix.Rmdir(p))
	case "unlink":
		return res(unix.Unlink(p))
	case "rename":
		return res(unix.Rename(p, p2))
	case "link":
		return res(unix.Link(p, p2))
	case "symlink":
		return res(unix.Symlink(o.Data, p))
	case "mkfifo":
		return res(unix.Mkfifo(p, o.Mode))
	case "mknodchr": // Flags is the device number
		return res(unix.Mknod(p, unix.S_IFCHR|o.Mode, o.Flags))
	case "chmod":
		return res(unix.Chmod(p, o.Mode))
	case "chown":
		return res(unix.Chown(p, o.UID, o.GID))
	case "truncate":
		return res(unix.Truncate(p, int64(o.Flags)))
	case "utimes":
		if o.Flags != 0 { // both times "now": needs write access
			return res(unix.UtimesNanoAt(unix.AT_FDCWD, p, nil, 0))
		}
		ts := []unix.Timespec{unix.NsecToTimespec(1e18), unix.NsecToTimespec(1e18)}
		return res(unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, 0))
	case "setxattr":
		return res(unix.Lsetxattr(p, o.Name, []byte(o.Data), 0))
	case "getxattr":
		buf := make([]byte, 256)
		n, err := unix.Lgetxattr(p, o.Name, buf)
		if err != nil {
			return res(err)
		}
		return permResult{Errno: "OK", Info: fmt.Sprintf("%q", buf[:n])}
	case "removexattr":
		return res(unix.Lremovexattr(p, o.Name))
	case "tree":
		return permTreeAs(p)
	}
	return permResult{Errno: "unknown op " + o.Kind}
}

func permWrite(p string, flags int, mode uint32, data string) permResult {
	fd, err := unix.Open(p, flags|unix.O_CLOEXEC, mode)
	if err != nil {
		return permResult{Errno: permErrno(err)}
	}
	defer unix.Close(fd)
	if _, err := unix.Pwrite(fd, []byte(data), 0); err != nil {
		return permResult{Errno: permErrno(err)}
	}
	return permResult{Errno: permErrno(unix.Close(fd))}
}

// permReaddir lists a directory the way ls does, so that a failure to open
// it and a failure to read it both show.
func permReaddir(p string) permResult {
	f, err := os.Open(p)
	if err != nil {
		return permResult{Errno: permErrno(err)}
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return permResult{Errno: permErrno(err)}
	}
	slices.Sort(names)
	return permResult{Errno: "OK", Info: strings.Join(names, ",")}
}

// permTreeAs describes the tree under p as the helper's uid sees it.
func permTreeAs(p string) permResult {
	lines, err := permTree(p, false)
	if err != nil {
		return permResult{Errno: permErrno(err), Info: err.Error()}
	}
	return permResult{Errno: "OK", Info: strings.Join(lines, "\n")}
}

// permTree describes every entry under root, one line each: type and
// permission bits, owner, size and contents of regular files, symlink
// targets and, with xattrs, the user.* xattrs. Unreadable directories and
// files are described as such.
func permTree(root string, xattrs bool) ([]string, error) {
	var lines []string
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		rel, _ := filepath.Rel(root, p)
		if err != nil {
			if p == root {
				return err
			}
			lines = append(lines, fmt.Sprintf("%s: %s", rel, permErrno(err)))
			return nil
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			lines = append(lines, fmt.Sprintf("%s: stat %s", rel, permErrno(err)))
			return nil
		}
		line := fmt.Sprintf("%s %#o %d:%d", rel, st.Mode, st.Uid, st.Gid)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			data, err := os.ReadFile(p)
			if err != nil {
				line += " read " + permErrno(err)
			} else {
				line += fmt.Sprintf(" %q nlink=%d", data, st.Nlink)
			}
		case unix.S_IFLNK:
			target, _ := os.Readlink(p)
			line += " -> " + target
		}
		if xattrs {
			line += permUserXattrs(p)
		}
		lines = append(lines, line)
		return nil
	})
	return lines, err
}

// permUserXattrs lists the user.* xattrs of p with their values.
func permUserXattrs(p string) string {
	buf := make([]byte, 4096)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		return " xattrs " + permErrno(err)
	}
	var out []string
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if !strings.HasPrefix(name, "user.") {
			continue
		}
		val := make([]byte, 256)
		m, err := unix.Lgetxattr(p, name, val)
		if err != nil {
			out = append(out, name+"="+permErrno(err))
			continue
		}
		out = append(out, fmt.Sprintf("%s=%q", name, val[:m]))
	}
	slices.Sort(out)
	if len(out) == 0 {
		return ""
	}
	return " [" + strings.Join(out, " ") + "]"
}

// permSharedDir returns a new temporary directory that every uid can
// search. t.TempDir's own parent is 0700, so it is opened up too; the
// directories are removed (as root) at the end of the test.
func permSharedDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// permCopyExe copies the executable src to dir/name with mode 0755, so that
// another uid can run it (the originals live in 0700 directories).
func permCopyExe(t *testing.T, src, dir, name string) string {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	dst := filepath.Join(dir, name)
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return dst
}

// permHelperExe copies this test binary to dir, for permRunAs.
func permHelperExe(t *testing.T, dir string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return permCopyExe(t, self, dir, "helper.test")
}

// permCred is the credential of the unprivileged uid: its own uid and gid
// and no supplementary groups. (NoSetGroups would keep root's groups, group
// 0 among them, and so grant group permissions the uid does not have.)
func permCred(uid, gid int) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: &syscall.Credential{
		Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{},
	}}
}

// permRunAs runs ops under root as uid:gid in the helper exe and returns
// their results, one per op.
func permRunAs(t *testing.T, exe string, uid, gid int, root string, ops []permOp) []permResult {
	t.Helper()
	req, err := json.Marshal(permRequest{Root: root, Ops: ops})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, "-test.run=^$")
	cmd.Dir = "/"
	cmd.Env = append(os.Environ(), permHelperEnv+"="+string(req))
	cmd.SysProcAttr = permCred(uid, gid)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("helper as uid %d: %v\nstdout: %s\nstderr: %s", uid, err, stdout.String(), stderr.String())
	}
	var reply permReply
	if err := json.Unmarshal(stdout.Bytes(), &reply); err != nil {
		t.Fatalf("helper reply: %v\n%s", err, stdout.String())
	}
	if reply.UID != uid || reply.GID != gid || len(reply.Groups) != 0 {
		t.Fatalf("helper ran as uid %d gid %d groups %v, want %d %d []", reply.UID, reply.GID, reply.Groups, uid, gid)
	}
	if len(reply.Results) != len(ops) {
		t.Fatalf("helper returned %d results for %d ops", len(reply.Results), len(ops))
	}
	return reply.Results
}

// needFUSEDevice makes /dev/fuse usable by every uid, as Debian does and as
// test.sh does, or skips.
func needFUSEDevice(t *testing.T) {
	t.Helper()
	st, err := os.Stat("/dev/fuse")
	if err != nil {
		t.Skipf("no /dev/fuse: %v", err)
	}
	if st.Mode().Perm()&0o006 != 0o006 {
		if err := os.Chmod("/dev/fuse", 0o666); err != nil {
			t.Skipf("cannot open /dev/fuse to other users: %v", err)
		}
		t.Logf("chmod 0666 /dev/fuse (was %v)", st.Mode().Perm())
	}
}

// permEntry is one object of the fixture tree.
type permEntry struct {
	path     string
	kind     byte // 'd' directory, 'f' regular file, 'l' symlink
	mode     uint32
	uid, gid int
	data     string // file contents or symlink target
}

var permFixture = []permEntry{
	{"private", 'd', 0o700, 0, 0, ""},
	{"private/f", 'f', 0o644, 0, 0, "secret"},
	{"private/sub", 'd', 0o755, 0, 0, ""},
	{"pub", 'd', 0o755, 0, 0, ""},
	{"pub/f", 'f', 0o644, 0, 0, "pub"},
	{"pub/sub", 'd', 0o755, 0, 0, ""},
	{"rootfile", 'f', 0o644, 0, 0, "root"},
	{"world", 'f', 0o666, 0, 0, "world"},
	{"grpw", 'f', 0o664, 0, permOther, "group-writable"},
	{"mine600", 'f', 0o600, permUID, permGID, "mine"},
	{"ro444", 'f', 0o444, permUID, permGID, "read-only"},
	{"sticky", 'd', 0o1777, 0, 0, ""},
	{"sticky/other", 'f', 0o644, permOther, permOther, "other's"},
	{"sticky/mine", 'f', 0o644, permUID, permGID, "mine"},
	{"sticky/otherdir", 'd', 0o755, permOther, permOther, ""},
	{"sticky/mydir", 'd', 0o755, permUID, permGID, ""},
	{"setuid", 'f', 0o4755, 0, 0, "#!/bin/sh\n"},
	{"setgid", 'f', 0o2755, 0, 0, "#!/bin/sh\n"},
	{"mysuid", 'f', 0o4755, permUID, permGID, "#!/bin/sh\n"},
	{"mysuid2", 'f', 0o4755, permUID, permGID, "#!/bin/sh\n"},
	{"mysgid", 'f', 0o2755, permUID, 0, "#!/bin/sh\n"},
	{"sgid", 'd', 0o2777, 0, permOther, ""},
	{"noexec", 'd', 0o644, 0, 0, ""},
	{"noexec/f", 'f', 0o644, 0, 0, "unreachable"},
	{"xonly", 'd', 0o711, 0, 0, ""},
	{"xonly/f", 'f', 0o644, 0, 0, "reachable"},
	{"mydir", 'd', 0o755, permUID, permGID, ""},
	{"mydir/f", 'f', 0o644, permUID, permGID, "f"},
	{"mydir/ro", 'f', 0o444, permUID, permGID, "ro"},
	{"mydir/sub", 'd', 0o755, permUID, permGID, ""},
	{"mydir/full", 'd', 0o755, permUID, permGID, ""},
	{"mydir/full/x", 'f', 0o644, permUID, permGID, "x"},
	{"link", 'l', 0, 0, 0, "rootfile"},
}

// permBuild creates the fixture under root (which must exist), as root.
// Modes are set after the owners, since chown clears set-id bits.
func permBuild(t *testing.T, root string) {
	t.Helper()
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, e := range permFixture {
		p := filepath.Join(root, e.path)
		var err error
		switch e.kind {
		case 'd':
			err = os.Mkdir(p, 0o700)
		case 'f':
			err = os.WriteFile(p, []byte(e.data), 0o600)
		case 'l':
			err = os.Symlink(e.data, p)
		}
		if err == nil {
			err = os.Lchown(p, e.uid, e.gid)
		}
		if err == nil && e.kind != 'l' {
			err = os.Chmod(p, os.FileMode(e.mode&0o777)|permModeBits(e.mode))
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// permModeBits converts the set-id and sticky bits of a stat mode to Go's.
func permModeBits(m uint32) os.FileMode {
	var fm os.FileMode
	if m&unix.S_ISUID != 0 {
		fm |= os.ModeSetuid
	}
	if m&unix.S_ISGID != 0 {
		fm |= os.ModeSetgid
	}
	if m&unix.S_ISVTX != 0 {
		fm |= os.ModeSticky
	}
	return fm
}

// permOps is the op list, run in this order on both trees. want is what
// ext4 answers, checked to make sure each op tests what it says.
var permOps = []permOp{
	// Search and read permission on directories.
	{Kind: "stat", Path: "private", want: "OK"},
	{Kind: "stat", Path: "private/f", want: "EACCES"},
	{Kind: "readdir", Path: "private", want: "EACCES"},
	{Kind: "open", Path: "private/f", Flags: unix.O_RDONLY, want: "EACCES"},
	{Kind: "readdir", Path: "noexec", want: "OK"},
	{Kind: "stat", Path: "noexec/f", want: "EACCES"},
	{Kind: "readdir", Path: "xonly", want: "EACCES"},
	{Kind: "stat", Path: "xonly/f", want: "OK"},
	{Kind: "read", Path: "xonly/f", want: "OK"},
	{Kind: "readdir", Path: ".", want: "OK"},
	{Kind: "readdir", Path: "sticky", want: "OK"},
	{Kind: "access", Path: "setuid", Mode: unix.X_OK, want: "OK"},
	{Kind: "access", Path: "rootfile", Mode: unix.X_OK, want: "EACCES"},
	{Kind: "access", Path: "rootfile", Mode: unix.R_OK, want: "OK"},
	{Kind: "access", Path: "rootfile", Mode: unix.W_OK, want: "EACCES"},
	{Kind: "access", Path: "ro444", Mode: unix.W_OK, want: "EACCES"},
	{Kind: "access", Path: "mine600", Mode: unix.W_OK, want: "OK"},
	{Kind: "access", Path: "private/f", Mode: unix.R_OK, want: "EACCES"},
	{Kind: "access", Path: "xonly", Mode: unix.X_OK, want: "OK"},
	{Kind: "access", Path: "noexec", Mode: unix.X_OK, want: "EACCES"},

	// Opening files.
	{Kind: "open", Path: "rootfile", Flags: unix.O_RDONLY, want: "OK"},
	{Kind: "open", Path: "rootfile", Flags: unix.O_WRONLY, want: "EACCES"},
	{Kind: "open", Path: "rootfile", Flags: unix.O_RDWR, want: "EACCES"},
	{Kind: "open", Path: "rootfile", Flags: unix.O_RDONLY | unix.O_TRUNC, want: "EACCES"},
	{Kind: "open", Path: "rootfile", Flags: unix.O_WRONLY | unix.O_CREAT, Mode: 0o644, want: "EACCES"},
	{Kind: "open", Path: "pub/f", Flags: unix.O_RDONLY | unix.O_NOATIME, want: "EPERM"},
	{Kind: "open", Path: "mine600", Flags: unix.O_RDONLY | unix.O_NOATIME, want: "OK"},
	{Kind: "open", Path: "grpw", Flags: unix.O_WRONLY, want: "EACCES"},
	{Kind: "open", Path: "setuid", Flags: unix.O_WRONLY, want: "EACCES"},
	{Kind: "open", Path: "pub", Flags: unix.O_WRONLY, want: "EISDIR"},
	{Kind: "open", Path: "ro444", Flags: unix.O_WRONLY, want: "EACCES"},
	{Kind: "open", Path: "mydir/ro", Flags: unix.O_RDWR, want: "EACCES"},
	{Kind: "write", Path: "world", Data: "W", want: "OK"},
	{Kind: "read", Path: "world", want: "OK"},
	{Kind: "write", Path: "mine600", Data: "M", want: "OK"},
	{Kind: "read", Path: "mine600", want: "OK"},
	{Kind: "open", Path: "sticky/other", Flags: unix.O_WRONLY | unix.O_CREAT, Mode: 0o644, want: "EACCES"},
	{Kind: "open", Path: "grpw", Flags: unix.O_RDONLY | unix.O_TRUNC, want: "EACCES"},

	// Creating files and directories.
	{Kind: "create", Path: "pub/new", Mode: 0o644, want: "EACCES"},
	{Kind: "create", Path: "private/new", Mode: 0o644, want: "EACCES"},
	{Kind: "create", Path: "newroot", Mode: 0o644, want: "EACCES"},
	{Kind: "create", Path: "noexec/new", Mode: 0o644, want: "EACCES"},
	{Kind: "create", Path: "sticky/new", Mode: 0o644, Data: "new", want: "OK"},
	{Kind: "stat", Path: "sticky/new", want: "OK"},
	{Kind: "create", Path: "mydir/new", Mode: 0o666, Data: "new", want: "OK"},
	{Kind: "stat", Path: "mydir/new", want: "OK"},
	{Kind: "create", Path: "sgid/new", Mode: 0o2755, Data: "new", want: "OK"},
	{Kind: "stat", Path: "sgid/new", want: "OK"},
	{Kind: "mkdir", Path: "sgid/d", Mode: 0o755, want: "OK"},
	{Kind: "stat", Path: "sgid/d", want: "OK"},
	{Kind: "mkdir", Path: "pub/d", Mode: 0o755, want: "EACCES"},
	{Kind: "mkdir", Path: "private/d", Mode: 0o755, want: "EACCES"},
	{Kind: "mkdir", Path: "noexec/d", Mode: 0o755, want: "EACCES"},
	{Kind: "mkdir", Path: "sticky/d", Mode: 0o700, want: "OK"},
	{Kind: "stat", Path: "sticky/d", want: "OK"},
	{Kind: "symlink", Path: "pub/sl", Data: "f", want: "EACCES"},
	{Kind: "symlink", Path: "mydir/sl", Data: "f", want: "OK"},
	{Kind: "stat", Path: "mydir/sl", want: "OK"},
	{Kind: "mkfifo", Path: "pub/fifo", Mode: 0o644, want: "EACCES"},
	{Kind: "mkfifo", Path: "mydir/fifo", Mode: 0o644, want: "OK"},
	{Kind: "stat", Path: "mydir/fifo", want: "OK"},
	{Kind: "mknodchr", Path: "mydir/null", Mode: 0o666, Flags: int(unix.Mkdev(1, 3)), want: "EPERM"},

	// The sticky directory.
	{Kind: "unlink", Path: "sticky/other", want: "EPERM"},
	{Kind: "rename", Path: "sticky/other", Path2: "sticky/o2", want: "EPERM"},
	{Kind: "rename", Path: "mydir/f", Path2: "sticky/other", want: "EPERM"},
	{Kind: "rmdir", Path: "sticky/otherdir", want: "EPERM"},
	{Kind: "setxattr", Path: "sticky", Name: "user.x", Data: "1", want: "EPERM"},
	{Kind: "unlink", Path: "sticky/mine", want: "OK"},
	{Kind: "rename", Path: "sticky/new", Path2: "sticky/new2", want: "OK"},
	{Kind: "rmdir", Path: "sticky/mydir", want: "OK"},
	{Kind: "rename", Path: "sticky/d", Path2: "sticky/d2", want: "OK"},
	{Kind: "readdir", Path: "sticky", want: "OK"},

	// Removing and renaming.
	{Kind: "rmdir", Path: "pub/sub", want: "EACCES"},
	{Kind: "rmdir", Path: "private/sub", want: "EACCES"},
	{Kind: "rmdir", Path: "mydir/full", want: "ENOTEMPTY"},
	{Kind: "rmdir", Path: "mydir/sub", want: "OK"},
	{Kind: "mkdir", Path: "mydir/sub", Mode: 0o750, want: "OK"},
	{Kind: "stat", Path: "mydir/sub", want: "OK"},
	{Kind: "readdir", Path: "mydir/sub", want: "OK"},
	{Kind: "unlink", Path: "pub/f", want: "EACCES"},
	{Kind: "unlink", Path: "rootfile", want: "EACCES"},
	{Kind: "unlink", Path: "pub", want: "EACCES"},
	{Kind: "unlink", Path: "mydir/full", want: "EISDIR"},
	{Kind: "unlink", Path: "mydir/ro", want: "OK"},
	{Kind: "rename", Path: "pub/f", Path2: "mydir/pf", want: "EACCES"},
	{Kind: "rename", Path: "mydir/f", Path2: "pub/mf", want: "EACCES"},
	{Kind: "rename", Path: "pub/sub", Path2: "mydir/psub", want: "EACCES"},
	{Kind: "rename", Path: "rootfile", Path2: "mydir/rf", want: "EACCES"},
	{Kind: "rename", Path: "mydir/f", Path2: "mydir/g", want: "OK"},
	{Kind: "readdir", Path: "mydir", want: "OK"},

	// Hard links: fs.protected_hardlinks decides for others' files.
	{Kind: "link", Path: "rootfile", Path2: "mydir/hl"},
	{Kind: "link", Path: "pub/f", Path2: "pub/hl"},
	{Kind: "link", Path: "mine600", Path2: "mydir/hl2", want: "OK"},
	{Kind: "stat", Path: "mydir/hl2", want: "OK"},
	{Kind: "link", Path: "mine600", Path2: "pub/hl3", want: "EACCES"},

	// Attributes of others' files and of one's own.
	{Kind: "chmod", Path: "rootfile", Mode: 0o777, want: "EPERM"},
	{Kind: "chmod", Path: "private/f", Mode: 0o777, want: "EACCES"},
	{Kind: "chmod", Path: "sticky", Mode: 0o777, want: "EPERM"},
	{Kind: "chmod", Path: "sticky/other", Mode: 0o666, want: "EPERM"},
	{Kind: "chmod", Path: "mine600", Mode: 0o640, want: "OK"},
	{Kind: "stat", Path: "mine600", want: "OK"},
	{Kind: "truncate", Path: "ro444", Flags: 1, want: "EACCES"},
	{Kind: "chmod", Path: "ro444", Mode: 0o644, want: "OK"},
	{Kind: "open", Path: "ro444", Flags: unix.O_WRONLY, want: "OK"},
	{Kind: "chmod", Path: "mysgid", Mode: 0o2775, want: "OK"},
	{Kind: "stat", Path: "mysgid", want: "OK"},
	{Kind: "chown", Path: "rootfile", UID: permUID, GID: -1, want: "EPERM"},
	{Kind: "chown", Path: "world", UID: -1, GID: permGID, want: "EPERM"},
	{Kind: "chown", Path: "mine600", UID: 0, GID: -1, want: "EPERM"},
	{Kind: "chown", Path: "mine600", UID: -1, GID: 0, want: "EPERM"},
	{Kind: "chown", Path: "mine600", UID: permUID, GID: permGID, want: "OK"},
	{Kind: "chown", Path: "mysuid", UID: -1, GID: permGID, want: "OK"},
	{Kind: "stat", Path: "mysuid", want: "OK"},
	{Kind: "write", Path: "mysuid2", Data: "#", want: "OK"},
	{Kind: "stat", Path: "mysuid2", want: "OK"},
	{Kind: "truncate", Path: "rootfile", want: "EACCES"},
	{Kind: "truncate", Path: "private/f", want: "EACCES"},
	{Kind: "truncate", Path: "pub", want: "EISDIR"},
	{Kind: "truncate", Path: "world", Flags: 2, want: "OK"},
	{Kind: "truncate", Path: "mine600", Flags: 1, want: "OK"},
	{Kind: "open", Path: "xonly/f", Flags: unix.O_WRONLY | unix.O_TRUNC, want: "EACCES"},
	{Kind: "stat", Path: "world", want: "OK"},
	{Kind: "open", Path: "world", Flags: unix.O_WRONLY | unix.O_TRUNC, want: "OK"},
	{Kind: "stat", Path: "world", want: "OK"},
	{Kind: "write", Path: "world", Data: "again", want: "OK"},
	{Kind: "utimes", Path: "rootfile", Flags: 1, want: "EACCES"},
	{Kind: "utimes", Path: "rootfile", want: "EPERM"},
	{Kind: "utimes", Path: "private/f", Flags: 1, want: "EACCES"},
	{Kind: "utimes", Path: "world", Flags: 1, want: "OK"},
	{Kind: "utimes", Path: "world", want: "EPERM"},
	{Kind: "utimes", Path: "mine600", want: "OK"},
	{Kind: "utimes", Path: "pub", Flags: 1, want: "EACCES"},
	{Kind: "utimes", Path: "mydir", want: "OK"},

	// Extended attributes.
	{Kind: "setxattr", Path: "rootfile", Name: "user.x", Data: "1", want: "EACCES"},
	{Kind: "setxattr", Path: "pub", Name: "user.x", Data: "1", want: "EACCES"},
	{Kind: "setxattr", Path: "world", Name: "user.x", Data: "1", want: "OK"},
	{Kind: "getxattr", Path: "world", Name: "user.x", want: "OK"},
	{Kind: "removexattr", Path: "world", Name: "user.x", want: "OK"},
	{Kind: "setxattr", Path: "mine600", Name: "user.x", Data: "2", want: "OK"},
	{Kind: "getxattr", Path: "mine600", Name: "user.x", want: "OK"},
	{Kind: "setxattr", Path: "mine600", Name: "trusted.x", Data: "1", want: "EPERM"},
	{Kind: "setxattr", Path: "mydir", Name: "user.x", Data: "3", want: "OK"},
	{Kind: "setxattr", Path: "link", Name: "user.x", Data: "1", want: "EPERM"},
	{Kind: "getxattr", Path: "private/f", Name: "user.x", want: "EACCES"},
	{Kind: "removexattr", Path: "rootfile", Name: "user.x", want: "EACCES"},

	// Whole tree, as this uid sees it.
	{Kind: "tree", Path: ".", want: "OK"},
}

// TestPermUnprivileged runs permOps as an unprivileged uid on a plain
// directory and on a union whose lower holds the same tree, and requires
// the same errnos, modes and owners from both.
func TestPermUnprivileged(t *testing.T) {
	needRoot(t)
	needFUSEDevice(t)
	needFUSE(t)
	dir := permSharedDir(t)
	helper := permHelperExe(t, dir)
	oracle := filepath.Join(dir, "ext4")
	lower := filepath.Join(dir, "lower")
	upper := filepath.Join(dir, "upper")
	merged := filepath.Join(dir, "merged")
	for _, d := range []string{oracle, lower, upper, merged} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	permBuild(t, oracle)
	permBuild(t, lower)
	mountUnion(t, lower, upper, merged)

	want := permRunAs(t, helper, permUID, permGID, oracle, permOps)
	got := permRunAs(t, helper, permUID, permGID, merged, permOps)
	for i, op := range permOps {
		if *permTrace {
			t.Logf("%v: %s | %s", op, want[i], got[i])
		}
		if op.want != "" && want[i].Errno != op.want {
			t.Errorf("ext4: %v: %s, test expects %s (fixture or test bug)", op, want[i], op.want)
		}
		if got[i] != want[i] {
			t.Errorf("%v:\n union: %s\n  ext4: %s", op, got[i], want[i])
		}
	}

	// What the uid created belongs to it, through the mount and in the
	// upper; a setgid directory passes its group on, as on ext4.
	for _, c := range []struct {
		path     string
		uid, gid int
	}{
		{"sticky/new2", permUID, permGID},
		{"sticky/d2", permUID, permGID},
		{"mydir/new", permUID, permGID},
		{"mydir/sub", permUID, permGID},
		{"mydir/fifo", permUID, permGID},
		{"sgid/new", permUID, permOther},
		{"sgid/d", permUID, permOther},
	} {
		for _, root := range []string{merged, upper} {
			var st unix.Stat_t
			p := filepath.Join(root, c.path)
			if err := unix.Lstat(p, &st); err != nil {
				t.Errorf("stat %s: %v", p, err)
				continue
			}
			if int(st.Uid) != c.uid || int(st.Gid) != c.gid {
				t.Errorf("%s: owner %d:%d, want %d:%d", p, st.Uid, st.Gid, c.uid, c.gid)
			}
		}
	}

	// The whole tree afterwards, as root sees it.
	wantTree, err := permTree(oracle, true)
	if err != nil {
		t.Fatal(err)
	}
	gotTree, err := permTree(merged, true)
	if err != nil {
		t.Fatal(err)
	}
	if d := permDiffLines(gotTree, wantTree); d != "" {
		t.Errorf("tree after the ops (-ext4 +union):\n%s", d)
	}
}

// permDiffLines lists the lines only in want (-) and only in got (+).
func permDiffLines(got, want []string) string {
	var b strings.Builder
	for _, l := range want {
		if !slices.Contains(got, l) {
			fmt.Fprintf(&b, "- %s\n", l)
		}
	}
	for _, l := range got {
		if !slices.Contains(want, l) {
			fmt.Fprintf(&b, "+ %s\n", l)
		}
	}
	return b.String()
}

// TestPermMknodWhiteoutRefused checks that an unprivileged user cannot
// create a whiteout by mknod of a 0/0 character device through the union.
// The VFS lets anyone create that device (it is the whiteout format), and
// ext4 shows it as a device; kernel overlayfs refuses it with EPERM
// (Linux: fs/overlayfs/dir.c, ovl_mknod: "Don't allow creation of
// "whiteout" on overlay"), since in the upper it would hide the name.
func TestPermMknodWhiteoutRefused(t *testing.T) {
	needRoot(t)
	needFUSEDevice(t)
	needFUSE(t)
	dir := permSharedDir(t)
	helper := permHelperExe(t, dir)
	lower := filepath.Join(dir, "lower")
	upper := filepath.Join(dir, "upper")
	merged := filepath.Join(dir, "merged")
	for _, d := range []string{lower, filepath.Join(lower, "mydir"), upper, merged} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(filepath.Join(lower, "mydir"), permUID, permGID); err != nil {
		t.Fatal(err)
	}
	mountUnion(t, lower, upper, merged)

	ops := []permOp{
		{Kind: "mknodchr", Path: "mydir/wh", Mode: 0o644, Flags: int(unix.Mkdev(0, 0)), want: "EPERM"},
		{Kind: "stat", Path: "mydir/wh", want: "ENOENT"},
		{Kind: "readdir", Path: "mydir", want: "OK"},
	}
	got := permRunAs(t, helper, permUID, permGID, merged, ops)
	for i, op := range ops {
		if got[i].Errno != op.want {
			t.Errorf("%v: %s, want %s", op, got[i], op.want)
		}
	}
	if got[2].Info != "" {
		t.Errorf("readdir mydir: %q, want it empty", got[2].Info)
	}
	if _, err := os.Lstat(filepath.Join(upper, "mydir", "wh")); err == nil {
		t.Errorf("upper/mydir/wh exists: a user created a whiteout")
	}
}
