// Package integration holds the tests that mount unionmount for real and
// check it through the mount point, as a user's programs would. They need
// /dev/fuse; tests that need root or an external tool skip when it is
// missing.
package integration

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// binary is the unionmount executable built once for all tests.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "unionmount-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "unionmount")
	build := exec.Command("go", "build", "-o", binary, "../cmd/unionmount")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build unionmount:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// needFUSE skips the test when this machine cannot mount FUSE filesystems.
func needFUSE(t testing.TB) {
	t.Helper()
	f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("no usable /dev/fuse: %v", err)
	}
	f.Close()
	if os.Geteuid() != 0 {
		if _, err := exec.LookPath("fusermount3"); err != nil {
			t.Skip("fusermount3 not installed (apt-get install fuse3)")
		}
	}
}

// needRoot skips the test unless it runs as root.
func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
}

// isMounted reports whether dir is a mount point.
func isMounted(dir string) bool {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && unescapeMountinfo(f[4]) == dir {
			return true
		}
	}
	return false
}

func unescapeMountinfo(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

// unmount detaches dir, lazily if it is busy, and waits until it is gone
// and its daemon, if unionmount served it, has exited.
func unmount(t testing.TB, dir string) {
	t.Helper()
	for i := 0; i < 50 && isMounted(dir); i++ {
		var cmd *exec.Cmd
		if os.Geteuid() == 0 {
			cmd = exec.Command("umount", dir)
		} else {
			cmd = exec.Command("fusermount3", "-u", dir)
		}
		if out, err := cmd.CombinedOutput(); err != nil && i == 10 {
			t.Logf("unmount %s: %v: %s", dir, err, out)
			if os.Geteuid() == 0 {
				exec.Command("umount", "-l", dir).Run()
			} else {
				exec.Command("fusermount3", "-u", "-z", dir).Run()
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if isMounted(dir) {
		t.Errorf("%s is still mounted", dir)
		return
	}
	// The daemon exits once the kernel ends the connection, but not at
	// once; until then it holds its layers open, and a cleanup after
	// this one may unmount the filesystem they are on (tmpfsDir).
	deadline := time.Now().Add(20 * time.Second)
	for len(serving(t, dir)) > 0 {
		if time.Now().After(deadline) {
			t.Errorf("the daemon for %s did not exit after the unmount: %v", dir, serving(t, dir))
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// serving lists the live unionmount daemons that have mnt itself as an
// argument: the mount point (daemons also matches longer paths).
func serving(t testing.TB, mnt string) []int {
	var pids []int
	for _, pid := range daemons(t, binary, mnt) {
		cmdline, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
		if err == nil && slices.Contains(strings.Split(string(cmdline), "\x00"), mnt) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// run runs the unionmount binary with args and returns its combined
// output and error.
func run(args ...string) (string, error) {
	cmd := exec.Command(binary, args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	return out.String(), err
}

// mountUnion mounts with the daemonizing form `unionmount ARGS...` (the last
// argument is the mount point) and unmounts in t.Cleanup.
func mountUnion(t testing.TB, args ...string) {
	t.Helper()
	needFUSE(t)
	mnt := args[len(args)-1]
	out, err := run(args...)
	if err != nil {
		t.Fatalf("unionmount %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	t.Cleanup(func() { unmount(t, mnt) })
	if !isMounted(mnt) {
		t.Fatalf("unionmount returned but %s is not mounted", mnt)
	}
}

// startForeground starts `unionmount -f ARGS...` and waits until the mount
// point (the last argument) is mounted and the daemon says so, which it
// does once it is done setting the mount up (and subscribed to signals).
// It returns the running daemon, so a test can signal or kill it;
// t.Cleanup unmounts and reaps it.
func startForeground(t testing.TB, args ...string) *exec.Cmd {
	t.Helper()
	needFUSE(t)
	mnt := args[len(args)-1]
	cmd := exec.Command(binary, append([]string{"-f"}, args...)...)
	var out lockedBuffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		unmount(t, mnt)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Errorf("daemon for %s did not exit after unmount", mnt)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for !isMounted(mnt) || !strings.Contains(out.String(), "unionmount: mounted") {
		select {
		case err := <-done:
			done <- err
			t.Fatalf("unionmount -f exited before mounting: %v\n%s", err, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not mounted after 10s\n%s", mnt, out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	return cmd
}

// daemons lists the live processes (not zombies) running exe with mnt in
// their arguments.
func daemons(t testing.TB, exe, mnt string) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		proc := filepath.Join("/proc", e.Name())
		if target, err := os.Readlink(filepath.Join(proc, "exe")); err != nil || target != exe {
			continue
		}
		stat, err := os.ReadFile(filepath.Join(proc, "stat"))
		if err != nil {
			continue
		}
		if i := bytes.LastIndexByte(stat, ')'); i >= 0 && bytes.HasPrefix(stat[i+1:], []byte(" Z")) {
			continue // exited, not yet reaped
		}
		cmdline, err := os.ReadFile(filepath.Join(proc, "cmdline"))
		if err != nil {
			continue
		}
		for _, arg := range strings.Split(string(cmdline), "\x00") {
			if strings.Contains(arg, mnt) {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// lockedBuffer is a bytes.Buffer that a command writes while a test reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
