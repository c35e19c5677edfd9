package integration

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// cliTree is a fresh set of directories for one union: two lowers, an
// upper and a mount point, all under root.
type cliTree struct {
	root, l1, l2, upper, merged string
}

// newCLITree creates l1 (a="l1"), l2 (a="l2", b="l2b"), an empty upper and
// an empty mount point in a temporary directory.
func newCLITree(t *testing.T) cliTree {
	t.Helper()
	root := t.TempDir()
	tr := cliTree{
		root:   root,
		l1:     filepath.Join(root, "l1"),
		l2:     filepath.Join(root, "l2"),
		upper:  filepath.Join(root, "upper"),
		merged: filepath.Join(root, "merged"),
	}
	for _, d := range []string{tr.l1, tr.l2, tr.upper, tr.merged} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cliWrite(t, filepath.Join(tr.l1, "a"), "l1")
	cliWrite(t, filepath.Join(tr.l2, "a"), "l2")
	cliWrite(t, filepath.Join(tr.l2, "b"), "l2b")
	return tr
}

func (tr cliTree) lowers() string { return tr.l1 + ":" + tr.l2 }

// defaultWork is where unionmount puts the workdir of tr.upper when none is
// given.
func (tr cliTree) defaultWork() string { return filepath.Join(tr.root, ".upper.work") }

func cliWrite(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// cliCheckFile checks that path reads as want.
func cliCheckFile(t *testing.T, path, want string) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Errorf("read %s: %v", path, err)
		return
	}
	if string(got) != want {
		t.Errorf("%s: got %q, want %q", path, got, want)
	}
}

// treeState lists every path under dir with its type, size and mtime, to
// show that a command wrote nothing.
func treeState(t *testing.T, dir string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		m[p] = info.Mode().String() + " " + strconv.FormatInt(info.Size(), 10) + " " + info.ModTime().String()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func treeChanges(before, after map[string]string) []string {
	var diffs []string
	for p, v := range before {
		if after[p] != v {
			diffs = append(diffs, p+" changed or removed")
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			diffs = append(diffs, p+" created")
		}
	}
	return diffs
}

// cliExitCode returns the exit status of a finished command, 0 for success.
func cliExitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

// daemonPIDs lists the running unionmount processes whose command line
// names mnt.
func daemonPIDs(t *testing.T, mnt string) []int { return daemons(t, binary, mnt) }

// waitNoDaemon fails the test unless the daemon serving mnt exits within
// ten seconds.
func waitNoDaemon(t *testing.T, mnt string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		pids := daemonPIDs(t, mnt)
		if len(pids) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("daemon for %s still running after unmount: pids %v", mnt, pids)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// mountFSType returns the filesystem type and source of the mount on dir.
func mountFSType(t *testing.T, dir string) (fsType, source string) {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 10 || unescapeMountinfo(f[4]) != dir {
			continue
		}
		for i := 6; i+2 < len(f); i++ {
			if f[i] == "-" {
				fsType, source = f[i+1], unescapeMountinfo(f[i+2])
			}
		}
	}
	return fsType, source
}

func TestCLIHelp(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"umount", "--help"}} {
		out, err := run(args...)
		if err != nil {
			t.Errorf("unionmount %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		for _, want := range []string{"USAGE", "Examples", "MERGED"} {
			if !strings.Contains(out, want) {
				t.Errorf("unionmount %s: output lacks %q:\n%s", strings.Join(args, " "), want, out)
			}
		}
	}
}

// TestCLIBadArguments checks that every wrong command line fails with a
// one-line error naming the problem, before anything is mounted or
// written.
func TestCLIBadArguments(t *testing.T) {
	tr := newCLITree(t)
	for _, d := range []string{"l1/sub", "upper/sub", "merged/sub", "l2/sub"} {
		if err := os.Mkdir(filepath.Join(tr.root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cliWrite(t, filepath.Join(tr.root, "file"), "x")
	if err := os.Symlink(tr.l1, filepath.Join(tr.root, "l1link")); err != nil {
		t.Fatal(err)
	}
	p := func(rel string) string { return filepath.Join(tr.root, rel) }
	many := strings.TrimSuffix(strings.Repeat(tr.l1+":", 501), ":")

	type badCase struct {
		name string
		args []string
		want string
	}
	cases := []badCase{
		{"no arguments", nil, "missing arguments"},
		{"only a lower", []string{tr.l1}, "missing arguments"},
		{"too many arguments", []string{tr.l1, tr.upper, tr.merged, p("x")}, "too many arguments"},
		{"missing merged", []string{tr.lowers(), tr.upper, p("nope")}, "mount point " + p("nope") + " does not exist"},
		{"missing lower", []string{tr.l1 + ":" + p("nope"), tr.upper, tr.merged}, "lower " + p("nope") + " does not exist"},
		{"missing upper", []string{tr.l1, p("nope"), tr.merged}, "upper " + p("nope") + " does not exist"},
		{"merged not a directory", []string{tr.l1, tr.upper, p("file")}, "is not a directory"},
		{"lower not a directory", []string{p("file"), tr.upper, tr.merged}, "lower " + p("file") + " is not a directory"},
		{"lower given twice", []string{tr.l1 + ":" + tr.l1, tr.upper, tr.merged}, "given twice"},
		{"lower twice through a symlink", []string{tr.l1 + ":" + p("l1link"), tr.upper, tr.merged}, "given twice"},
		{"lower is the upper", []string{tr.upper + ":" + tr.l1, tr.upper, tr.merged}, tr.upper + " is given twice"},
		{"merged is the upper", []string{tr.l1, tr.upper, tr.upper}, "given twice"},
		{"merged is a lower", []string{tr.l1, tr.upper, tr.l1}, "given twice"},
		{"upper inside a lower", []string{tr.l1, p("l1/sub"), tr.merged}, "upper " + p("l1/sub") + " is inside lower " + tr.l1},
		{"lower inside the upper", []string{p("upper/sub"), tr.upper, tr.merged}, "lower " + p("upper/sub") + " is inside upper " + tr.upper},
		{"merged inside the upper", []string{tr.l1, tr.upper, p("upper/sub")}, "mount point " + p("upper/sub") + " is inside upper"},
		{"merged inside a lower", []string{tr.lowers(), tr.upper, p("l2/sub")}, "mount point " + p("l2/sub") + " is inside lower " + tr.l2},
		{"upper inside merged", []string{tr.l1, p("merged/sub"), tr.merged}, "upper " + p("merged/sub") + " is inside mount point"},
		{"workdir inside the upper", []string{"--workdir", p("upper/work"), tr.l1, tr.upper, tr.merged}, "workdir " + p("upper/work") + " is inside upper"},
		{"workdir inside a lower", []string{"-o", "lowerdir=" + tr.l1 + ",upperdir=" + tr.upper + ",workdir=" + p("l1/work"), tr.merged}, "workdir " + p("l1/work") + " is inside lower"},
		{"workdir inside merged", []string{"-w", p("merged/work"), tr.l1, tr.upper, tr.merged}, "workdir " + p("merged/work") + " is inside mount point"},
		{"workdir missing parent", []string{"-w", p("nope/work"), tr.l1, tr.upper, tr.merged}, "workdir " + p("nope/work") + " does not exist"},
		{"too many lowers", []string{many, tr.upper, tr.merged}, "too many lower directories: 501"},
		{"empty lower element", []string{tr.l1 + "::" + tr.l2, tr.upper, tr.merged}, "empty lower directory"},
		{"trailing colon", []string{tr.l1 + ":", tr.upper, tr.merged}, "empty lower directory"},
		{"unknown -o option", []string{"-o", "lowerdir=" + tr.l1 + ",frobnicate", tr.merged}, `unknown mount option "frobnicate"`},
		{"unknown flag", []string{"--frobnicate", tr.l1, tr.merged}, "frobnicate"},
		{"upper given twice", []string{"-o", "upperdir=" + tr.upper, tr.l1, tr.upper, tr.merged}, "upper directory given twice"},
		{"lowerdir with too many arguments", []string{"-o", "lowerdir=" + tr.l1, "src", tr.upper, tr.merged}, "expected [SOURCE] MERGED"},
		{"flag after the directories", []string{tr.l1, tr.upper, tr.merged, "-f"}, "must come before"},
		{"workdir without upper", []string{"-o", "lowerdir=" + tr.l1 + ",workdir=" + p("w"), tr.merged}, "without an upper"},
		{"umount without argument", []string{"umount"}, "expected one argument"},
		{"umount of a plain directory", []string{"umount", tr.merged}, "not a mount point"},
		{"umount of another filesystem", []string{"umount", "/proc"}, "not a unionmount mount"},
	}
	if other, err := os.MkdirTemp("/dev/shm", "unionmount-test"); err == nil {
		t.Cleanup(func() { os.RemoveAll(other) })
		var a, b syscall.Stat_t
		if syscall.Stat(other, &a) == nil && syscall.Stat(tr.upper, &b) == nil && a.Dev != b.Dev {
			w := filepath.Join(other, "work")
			cases = append(cases, badCase{"workdir on another filesystem", []string{"-w", w, tr.l1, tr.upper, tr.merged},
				"workdir " + w + " is not on the same filesystem as upper " + tr.upper})
		}
	}

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := treeState(t, tr.root)
			out, err := run(tc.args...)
			if code := cliExitCode(err); code != 1 {
				t.Errorf("exit status %d, want 1 (%v)", code, err)
			}
			out = strings.TrimSuffix(out, "\n")
			if !strings.HasPrefix(out, "unionmount: ") || strings.Contains(out, "\n") {
				t.Errorf("want one line starting with \"unionmount: \", got:\n%s", out)
			}
			if !strings.Contains(out, tc.want) {
				t.Errorf("got %q, want it to mention %q", out, tc.want)
			}
			if diffs := treeChanges(before, treeState(t, tr.root)); len(diffs) > 0 {
				t.Errorf("the command wrote: %v", diffs)
			}
			if isMounted(tr.merged) {
				unmount(t, tr.merged)
				t.Errorf("%s was mounted", tr.merged)
			}
		})
	}
}

// TestMountDaemonReturnsWhenLive checks that the command returns only once
// the union serves, with the leftmost lower on top and the derived workdir
// created next to the upper.
func TestMountDaemonReturnsWhenLive(t *testing.T) {
	tr := newCLITree(t)
	mountUnion(t, tr.lowers(), tr.upper, tr.merged)
	cliCheckFile(t, filepath.Join(tr.merged, "a"), "l1")
	cliCheckFile(t, filepath.Join(tr.merged, "b"), "l2b")
	if st, err := os.Stat(tr.defaultWork()); err != nil || !st.IsDir() {
		t.Errorf("derived workdir %s: %v", tr.defaultWork(), err)
	}
	if fsType, _ := mountFSType(t, tr.merged); fsType != "fuse.unionmount" {
		t.Errorf("filesystem type %q, want fuse.unionmount", fsType)
	}
	cliWrite(t, filepath.Join(tr.merged, "new"), "new")
	cliCheckFile(t, filepath.Join(tr.upper, "new"), "new")
	if pids := daemonPIDs(t, tr.merged); len(pids) != 1 {
		t.Errorf("got daemons %v, want one", pids)
	}
}

// TestMountOutputThroughPipe is out=$(unionmount ...): the caller reads the
// command's output to EOF, which must come when the command exits even
// though the daemon lives on.
func TestMountOutputThroughPipe(t *testing.T) {
	needFUSE(t)
	tr := newCLITree(t)
	cmd := exec.Command(binary, tr.lowers(), tr.upper, tr.merged)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout // as in out=$(... 2>&1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unmount(t, tr.merged) })
	type result struct {
		out []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := io.ReadAll(stdout)
		done <- result{out, err}
	}()
	select {
	case r := <-done:
		if err := cmd.Wait(); err != nil {
			t.Fatalf("unionmount: %v\n%s", err, r.out)
		}
	case <-time.After(15 * time.Second):
		cmd.Process.Kill()
		t.Fatal("reading unionmount's output did not reach EOF within 15s")
	}
	if !isMounted(tr.merged) {
		t.Fatalf("%s not mounted", tr.merged)
	}
	cliCheckFile(t, filepath.Join(tr.merged, "a"), "l1")
}

// startForegroundWait is startForeground that also returns the channel on
// which the daemon's exit comes.
func startForegroundWait(t *testing.T, args ...string) (*exec.Cmd, <-chan error, *strings.Builder) {
	t.Helper()
	needFUSE(t)
	mnt := args[len(args)-1]
	cmd := exec.Command(binary, append([]string{"-f"}, args...)...)
	out := &strings.Builder{}
	cmd.Stdout = out
	cmd.Stderr = out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		unmount(t, mnt)
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for !isMounted(mnt) {
		select {
		case err := <-done:
			t.Fatalf("unionmount -f exited before mounting: %v\n%s", err, out)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not mounted after 10s\n%s", mnt, out)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return cmd, done, out
}

func TestMountForegroundSignals(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			tr := newCLITree(t)
			cmd, done, out := startForegroundWait(t, tr.lowers(), tr.upper, tr.merged)
			cliCheckFile(t, filepath.Join(tr.merged, "a"), "l1")
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("unionmount -f after %v: %v\n%s", sig, err, out)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("unionmount -f still running 10s after %v", sig)
			}
			if isMounted(tr.merged) {
				t.Errorf("%s still mounted after %v", tr.merged, sig)
			}
		})
	}
}

// TestMountUnmountWays checks that each way to unmount works and that the
// daemon then exits by itself.
func TestMountUnmountWays(t *testing.T) {
	ways := []struct {
		name     string
		cmd      func(mnt string) *exec.Cmd
		needRoot bool
	}{
		{"unionmount umount", func(mnt string) *exec.Cmd { return exec.Command(binary, "umount", mnt) }, false},
		{"umount", func(mnt string) *exec.Cmd { return exec.Command("umount", mnt) }, true},
		{"fusermount3 -u", func(mnt string) *exec.Cmd { return exec.Command("fusermount3", "-u", mnt) }, false},
	}
	for _, w := range ways {
		t.Run(w.name, func(t *testing.T) {
			if w.needRoot {
				needRoot(t)
			}
			if _, err := exec.LookPath(w.cmd("x").Path); err != nil {
				t.Skipf("%s not installed", w.cmd("x").Path)
			}
			tr := newCLITree(t)
			mountUnion(t, tr.lowers(), tr.upper, tr.merged)
			if pids := daemonPIDs(t, tr.merged); len(pids) != 1 {
				t.Errorf("got daemons %v, want one", pids)
			}
			if out, err := w.cmd(tr.merged).CombinedOutput(); err != nil {
				t.Fatalf("%s: %v\n%s", w.name, err, out)
			}
			if isMounted(tr.merged) {
				t.Errorf("%s still mounted", tr.merged)
			}
			waitNoDaemon(t, tr.merged)
		})
	}
}

func TestMountAlreadyMounted(t *testing.T) {
	tr := newCLITree(t)
	mountUnion(t, tr.l1, tr.upper, tr.merged)
	other := filepath.Join(tr.root, "upper2")
	if err := os.Mkdir(other, 0o755); err != nil {
		t.Fatal(err)
	}
	before := treeState(t, tr.upper)
	out, err := run(tr.l2, other, tr.merged)
	if cliExitCode(err) != 1 || !strings.Contains(out, "is already a unionmount mount") {
		t.Errorf("mounting twice: %v: %q, want exit 1 and \"already a unionmount mount\"", err, out)
	}
	if _, err := os.Stat(filepath.Join(tr.root, ".upper2.work")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("workdir of the refused mount was created: %v", err)
	}
	if diffs := treeChanges(before, treeState(t, tr.upper)); len(diffs) > 0 {
		t.Errorf("upper changed: %v", diffs)
	}
	cliCheckFile(t, filepath.Join(tr.merged, "a"), "l1")
}

// TestMountOptionSyntax mounts with fuse-overlayfs's -o syntax, also in the
// order mount.fuse3 uses (source and mount point first, -o last).
func TestMountOptionSyntax(t *testing.T) {
	tr := newCLITree(t)
	work := filepath.Join(tr.root, "work")
	opts := "lowerdir=" + tr.lowers() + ",upperdir=" + tr.upper + ",workdir=" + work
	forms := map[string][]string{
		"flags first": {"-o", opts, "-o", "nodev,noatime,nofail,_netdev,defaults", tr.merged},
		"helper form": {"mysource", tr.merged, "-o", "rw," + opts + ",dev,suid"},
	}
	for name, args := range forms {
		t.Run(name, func(t *testing.T) {
			needFUSE(t)
			out, err := run(args...)
			t.Cleanup(func() { unmount(t, tr.merged) })
			if err != nil {
				t.Fatalf("unionmount %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			cliCheckFile(t, filepath.Join(tr.merged, "a"), "l1")
			cliCheckFile(t, filepath.Join(tr.merged, "b"), "l2b")
			if st, err := os.Stat(work); err != nil || !st.IsDir() {
				t.Errorf("workdir %s: %v", work, err)
			}
			if _, err := os.Stat(tr.defaultWork()); err == nil {
				t.Errorf("default workdir created although workdir= was given")
			}
			fsType, source := mountFSType(t, tr.merged)
			if fsType != "fuse.unionmount" {
				t.Errorf("filesystem type %q, want fuse.unionmount", fsType)
			}
			if name == "helper form" && source != "mysource" {
				t.Errorf("source %q, want mysource", source)
			}
			unmount(t, tr.merged)
			waitNoDaemon(t, tr.merged)
		})
	}
}

// TestMountEscapedColon mounts a lower whose name has a colon, written
// "\:" as for kernel overlayfs.
func TestMountEscapedColon(t *testing.T) {
	tr := newCLITree(t)
	odd := filepath.Join(tr.root, "a:b")
	if err := os.Mkdir(odd, 0o755); err != nil {
		t.Fatal(err)
	}
	cliWrite(t, filepath.Join(odd, "c"), "odd")
	mountUnion(t, strings.ReplaceAll(odd, ":", `\:`)+":"+tr.l2, tr.merged)
	cliCheckFile(t, filepath.Join(tr.merged, "c"), "odd")
	cliCheckFile(t, filepath.Join(tr.merged, "a"), "l2")
}

// TestMountReadOnly checks that a union without an upper, or mounted
// read-only, refuses writes with EROFS and shows the upper unchanged.
func TestMountReadOnly(t *testing.T) {
	forms := map[string]func(tr cliTree) []string{
		"no upper":    func(tr cliTree) []string { return []string{tr.lowers(), tr.merged} },
		"--read-only": func(tr cliTree) []string { return []string{"--read-only", tr.lowers(), tr.upper, tr.merged} },
		"-o ro": func(tr cliTree) []string {
			return []string{"-o", "ro,lowerdir=" + tr.lowers() + ",upperdir=" + tr.upper, tr.merged}
		},
	}
	for name, args := range forms {
		t.Run(name, func(t *testing.T) {
			tr := newCLITree(t)
			cliWrite(t, filepath.Join(tr.upper, "u"), "upper")
			before := treeState(t, tr.root)
			mountUnion(t, args(tr)...)
			cliCheckFile(t, filepath.Join(tr.merged, "a"), "l1")
			if name != "no upper" {
				cliCheckFile(t, filepath.Join(tr.merged, "u"), "upper")
			}
			err := os.WriteFile(filepath.Join(tr.merged, "new"), []byte("x"), 0o644)
			if !errors.Is(err, syscall.EROFS) {
				t.Errorf("write to a read-only union: got %v, want EROFS", err)
			}
			err = os.WriteFile(filepath.Join(tr.merged, "a"), []byte("x"), 0o644)
			if !errors.Is(err, syscall.EROFS) {
				t.Errorf("overwrite in a read-only union: got %v, want EROFS", err)
			}
			unmount(t, tr.merged)
			if diffs := treeChanges(before, treeState(t, tr.root)); len(diffs) > 0 {
				t.Errorf("read-only mount wrote: %v", diffs)
			}
		})
	}
}

// cliOnMountPath puts the binary where mount(8) finds helpers: it runs them with a
// fixed PATH, so the test's PATH does not reach mount.fuse3.
func cliOnMountPath(t *testing.T) {
	t.Helper()
	needRoot(t)
	needFUSE(t)
	if _, err := exec.LookPath("mount.fuse3"); err != nil {
		t.Skip("mount.fuse3 not installed (apt-get install fuse3)")
	}
	link := "/usr/local/bin/unionmount"
	if target, err := os.Readlink(link); err == nil {
		if !strings.Contains(target, "unionmount-bin") {
			t.Skipf("%s exists and is not a test binary; not replacing it", link)
		}
		os.Remove(link) // left over from an earlier test run
	} else if _, err := os.Lstat(link); err == nil {
		t.Skipf("%s exists; not replacing it", link)
	}
	if err := os.Symlink(binary, link); err != nil {
		t.Skipf("cannot put unionmount on mount's PATH: %v", err)
	}
	t.Cleanup(func() { os.Remove(link) })
}

// TestMountTypeFuseUnionmount mounts with mount -t fuse.unionmount, which
// runs mount.fuse3, which runs "unionmount SOURCE MERGED -o OPTS".
func TestMountTypeFuseUnionmount(t *testing.T) {
	cliOnMountPath(t)
	tr := newCLITree(t)
	work := filepath.Join(tr.root, "work")
	opts := "lowerdir=" + tr.lowers() + ",upperdir=" + tr.upper + ",workdir=" + work + ",nofail"
	out, err := exec.Command("mount", "-t", "fuse.unionmount", "unionmount", tr.merged, "-o", opts).CombinedOutput()
	t.Cleanup(func() { unmount(t, tr.merged) })
	if err != nil {
		t.Fatalf("mount -t fuse.unionmount: %v\n%s", err, out)
	}
	cliCheckFile(t, filepath.Join(tr.merged, "a"), "l1")
	cliWrite(t, filepath.Join(tr.merged, "new"), "new")
	cliCheckFile(t, filepath.Join(tr.upper, "new"), "new")
	if out, err := exec.Command("umount", tr.merged).CombinedOutput(); err != nil {
		t.Fatalf("umount: %v\n%s", err, out)
	}
	waitNoDaemon(t, tr.merged)
}

// TestMountFstab mounts an fstab line with mount -T FILE MERGED.
func TestMountFstab(t *testing.T) {
	cliOnMountPath(t)
	tr := newCLITree(t)
	work := filepath.Join(tr.root, "work")
	fstab := filepath.Join(tr.root, "fstab")
	line := "unionmount " + tr.merged + " fuse.unionmount lowerdir=" + tr.lowers() +
		",upperdir=" + tr.upper + ",workdir=" + work + ",noauto,nofail,_netdev 0 0\n"
	cliWrite(t, fstab, "# test fstab\n"+line)
	out, err := exec.Command("mount", "-T", fstab, tr.merged).CombinedOutput()
	t.Cleanup(func() { unmount(t, tr.merged) })
	if err != nil {
		t.Fatalf("mount -T %s: %v\n%s", fstab, err, out)
	}
	cliCheckFile(t, filepath.Join(tr.merged, "a"), "l1")
	cliCheckFile(t, filepath.Join(tr.merged, "b"), "l2b")
	if out, err := exec.Command("umount", tr.merged).CombinedOutput(); err != nil {
		t.Fatalf("umount: %v\n%s", err, out)
	}
	waitNoDaemon(t, tr.merged)
}

// TestMountLogFile checks that a daemon started with --log (and --debug)
// writes its diagnostics there once it has detached.
func TestMountLogFile(t *testing.T) {
	needFUSE(t)
	base := t.TempDir()
	lower, upper, mnt := filepath.Join(base, "l"), filepath.Join(base, "u"), filepath.Join(base, "m")
	for _, d := range []string{lower, upper, mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	logFile := filepath.Join(base, "daemon.log")
	mountUnion(t, "--debug", "-o", "log="+logFile, lower, upper, mnt)
	if _, err := os.ReadDir(mnt); err != nil {
		t.Fatal(err)
	}
	unmount(t, mnt)
	data, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatalf("no log file: %v", err)
	}
	if !strings.Contains(string(data), "OPENDIR") {
		t.Errorf("log has no OPENDIR request:\n%s", data)
	}
}
