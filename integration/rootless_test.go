package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// rootlessUID is the user that mounts without privileges, through
// fusermount3.
const (
	rootlessUID = permUID
	rootlessGID = permGID
)

// rootlessRun runs name with args as the unprivileged user and returns its
// combined output.
func rootlessRun(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = "/"
	cmd.SysProcAttr = permCred(rootlessUID, rootlessGID)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	return out.String(), err
}

// rootlessUIDOf returns the real uid of process pid.
func rootlessUIDOf(t *testing.T, pid int) int {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[0] == "Uid:" {
			uid, err := strconv.Atoi(f[1])
			if err != nil {
				t.Fatal(err)
			}
			return uid
		}
	}
	t.Fatalf("no Uid line in /proc/%d/status", pid)
	return -1
}

// rootlessWaitGone waits until no process runs exe for mnt any more. A daemon
// still there after ten seconds fails the test and is killed, by its pid.
func rootlessWaitGone(t *testing.T, exe, mnt string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		pids := daemons(t, exe, mnt)
		if len(pids) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("daemon for %s still running after unmount: pids %v; killing them", mnt, pids)
			for _, pid := range pids {
				_ = unix.Kill(pid, unix.SIGKILL) // the test has failed already
			}
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// rootlessMount mounts as the unprivileged user with the daemon form and
// returns the daemon's pid. The unmount is registered before mounting, so
// it runs whatever happens.
func rootlessMount(t *testing.T, exe, lower, upper, merged string) int {
	t.Helper()
	t.Cleanup(func() {
		if isMounted(merged) {
			out, err := rootlessRun("fusermount3", "-u", merged)
			if err != nil {
				t.Errorf("fusermount3 -u %s as uid %d: %v\n%s", merged, rootlessUID, err, out)
			}
			if isMounted(merged) {
				_ = exec.Command("umount", "-l", merged).Run() // root's last resort
			}
		}
		rootlessWaitGone(t, exe, merged)
	})
	out, err := rootlessRun(exe, lower, upper, merged)
	if err != nil {
		t.Fatalf("unionmount as uid %d: %v\n%s", rootlessUID, err, out)
	}
	if !isMounted(merged) {
		t.Fatalf("unionmount returned but %s is not mounted\n%s", merged, out)
	}
	pids := daemons(t, exe, merged)
	if len(pids) != 1 {
		t.Fatalf("daemons for %s: %v, want exactly one", merged, pids)
	}
	if uid := rootlessUIDOf(t, pids[0]); uid != rootlessUID {
		t.Errorf("daemon %d runs as uid %d, want %d", pids[0], uid, rootlessUID)
	}
	return pids[0]
}

// rootlessUnmount unmounts with fusermount3 -u as the user and checks that
// the daemon exits.
func rootlessUnmount(t *testing.T, exe, merged string) {
	t.Helper()
	if out, err := rootlessRun("fusermount3", "-u", merged); err != nil {
		t.Fatalf("fusermount3 -u %s as uid %d: %v\n%s", merged, rootlessUID, err, out)
	}
	if isMounted(merged) {
		t.Errorf("%s still mounted after fusermount3 -u", merged)
	}
	rootlessWaitGone(t, exe, merged)
}

// rootlessCheckOps fails the test for every op whose errno is not the
// expected one, or whose observation differs from the expected info.
func rootlessCheckOps(t *testing.T, ops []permOp, got []permResult, info map[int]string) {
	t.Helper()
	for i, op := range ops {
		if got[i].Errno != op.want {
			t.Errorf("%v as uid %d: %s, want %s", op, rootlessUID, got[i], op.want)
		}
		if want, ok := info[i]; ok && got[i].Info != want {
			t.Errorf("%v as uid %d: saw %s, want %s", op, rootlessUID, got[i].Info, want)
		}
	}
}

// TestRootlessMount mounts as an unprivileged user through fusermount3,
// copies up, whites out and makes a directory opaque as that user, checks
// the upper in the kernel's userxattr format, and remounts.
func TestRootlessMount(t *testing.T) {
	needRoot(t)
	if _, err := exec.LookPath("fusermount3"); err != nil {
		t.Skip("fusermount3 not installed (apt-get install fuse3)")
	}
	needFUSEDevice(t)
	dir := permSharedDir(t)
	exe := permCopyExe(t, binary, dir, "unionmount")
	helper := permHelperExe(t, dir)

	// Everything is the user's, including the directory that receives
	// the derived work directory .upper.work.
	home := filepath.Join(dir, "home")
	lower := filepath.Join(home, "lower")
	upper := filepath.Join(home, "upper")
	merged := filepath.Join(home, "merged")
	for _, e := range []permEntry{
		{"", 'd', 0o755, 0, 0, ""},
		{"lower", 'd', 0o755, 0, 0, ""},
		{"lower/file", 'f', 0o644, 0, 0, "lower data\n"},
		{"lower/gone", 'f', 0o644, 0, 0, "gone\n"},
		{"lower/dir", 'd', 0o755, 0, 0, ""},
		{"lower/dir/a", 'f', 0o644, 0, 0, "a\n"},
		{"lower/dir/sub", 'd', 0o700, 0, 0, ""},
		{"lower/dir/sub/c", 'f', 0o600, 0, 0, "c\n"},
		{"lower/keep", 'd', 0o755, 0, 0, ""},
		{"lower/keep/k", 'f', 0o644, 0, 0, "k\n"},
		{"upper", 'd', 0o755, 0, 0, ""},
		{"merged", 'd', 0o755, 0, 0, ""},
	} {
		p := filepath.Join(home, e.path)
		var err error
		if e.kind == 'd' {
			err = os.Mkdir(p, os.FileMode(e.mode))
		} else {
			err = os.WriteFile(p, []byte(e.data), os.FileMode(e.mode))
		}
		if err == nil {
			err = os.Chown(p, rootlessUID, rootlessGID)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	lowerBefore, err := permTree(lower, true)
	if err != nil {
		t.Fatal(err)
	}

	rootlessMount(t, exe, lower, upper, merged)
	ops := []permOp{
		{Kind: "write", Path: "file", Data: "UPPER", want: "OK"}, // copy-up, partial overwrite
		{Kind: "read", Path: "file", want: "OK"},
		{Kind: "unlink", Path: "gone", want: "OK"}, // whiteout
		{Kind: "stat", Path: "gone", want: "ENOENT"},
		{Kind: "unlink", Path: "dir/a", want: "OK"},
		{Kind: "unlink", Path: "dir/sub/c", want: "OK"},
		{Kind: "rmdir", Path: "dir/sub", want: "OK"},
		{Kind: "rmdir", Path: "dir", want: "OK"},
		{Kind: "mkdir", Path: "dir", Mode: 0o755, want: "OK"}, // opaque
		{Kind: "create", Path: "dir/new", Mode: 0o644, Data: "new\n", want: "OK"},
		{Kind: "readdir", Path: "dir", want: "OK"},
		{Kind: "readdir", Path: ".", want: "OK"},
		{Kind: "tree", Path: ".", want: "OK"},
	}
	got := permRunAs(t, helper, rootlessUID, rootlessGID, merged, ops)
	rootlessCheckOps(t, ops, got, map[int]string{
		1:  `"UPPER data\n"`,
		10: "new",
		11: "dir,file,keep",
	})
	tree := got[len(got)-1].Info
	if *permTrace {
		upperTree, _ := permTree(upper, true)
		t.Logf("merged as uid %d:\n%s\nupper:\n%s", rootlessUID, tree, strings.Join(upperTree, "\n"))
	}

	// The upper, as root sees it.
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(upper, "gone"), &st); err != nil {
		t.Errorf("whiteout: %v", err)
	} else if st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Errorf("whiteout upper/gone: mode %#o rdev %d:%d, want a character device 0/0",
			st.Mode, unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}
	buf := make([]byte, 16)
	n, err := unix.Lgetxattr(filepath.Join(upper, "dir"), "user.overlay.opaque", buf)
	if err != nil || string(buf[:n]) != "y" {
		t.Errorf("upper/dir: user.overlay.opaque = %q, %v; want \"y\"", buf[:max(n, 0)], err)
	}
	if _, err := os.Lstat(filepath.Join(upper, "dir", "a")); !os.IsNotExist(err) {
		t.Errorf("upper/dir/a: %v, want it absent from the opaque directory", err)
	}
	rootlessCheckFile(t, filepath.Join(upper, "file"), "UPPER data\n")
	rootlessCheckFile(t, filepath.Join(upper, "dir", "new"), "new\n")
	rootlessCheckFile(t, filepath.Join(lower, "file"), "lower data\n")
	rootlessNoTrustedXattrs(t, upper)
	rootlessCheckOwner(t, upper)

	// Unmount as the user, and mount again: the whiteout and the opaque
	// directory still hide the lower's entries.
	rootlessUnmount(t, exe, merged)
	rootlessMount(t, exe, lower, upper, merged)
	again := []permOp{
		{Kind: "tree", Path: ".", want: "OK"},
		{Kind: "stat", Path: "gone", want: "ENOENT"},
		{Kind: "stat", Path: "dir/a", want: "ENOENT"},
		{Kind: "readdir", Path: "dir", want: "OK"},
	}
	got = permRunAs(t, helper, rootlessUID, rootlessGID, merged, again)
	rootlessCheckOps(t, again, got, map[int]string{0: tree, 3: "new"})
	rootlessUnmount(t, exe, merged)

	lowerAfter, err := permTree(lower, true)
	if err != nil {
		t.Fatal(err)
	}
	if d := permDiffLines(lowerAfter, lowerBefore); d != "" {
		t.Errorf("the lower changed (-before +after):\n%s", d)
	}
}

func rootlessCheckFile(t *testing.T, p, want string) {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Errorf("read %s: %v", p, err)
		return
	}
	if string(data) != want {
		t.Errorf("%s: %q, want %q", p, data, want)
	}
}

// rootlessNoTrustedXattrs fails the test for every trusted.* xattr under
// root: an unprivileged union can only use user.*.
func rootlessNoTrustedXattrs(t *testing.T, root string) {
	t.Helper()
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		buf := make([]byte, 4096)
		n, err := unix.Llistxattr(p, buf)
		if err != nil {
			return fmt.Errorf("listxattr %s: %w", p, err)
		}
		for _, name := range strings.Split(string(buf[:n]), "\x00") {
			if strings.HasPrefix(name, "trusted.") {
				t.Errorf("%s has xattr %s", p, name)
			}
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}

// rootlessCheckOwner fails the test for every entry under root that the
// unprivileged user does not own.
func rootlessCheckOwner(t *testing.T, root string) {
	t.Helper()
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		if st.Uid != rootlessUID || st.Gid != rootlessGID {
			t.Errorf("%s: owner %d:%d, want %d:%d", p, st.Uid, st.Gid, rootlessUID, rootlessGID)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}
