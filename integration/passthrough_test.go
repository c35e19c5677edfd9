package integration

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// ptMount mounts lowers over upper on mnt with the debug log in a file,
// and returns a function counting the requests of each opcode logged so
// far. A panic in the daemon (go-fuse logs it and serves on) fails the
// test.
func ptMount(t *testing.T, lowers []string, upper, mnt string, opts ...string) (count func(op string) int) {
	t.Helper()
	return debugMount(t, opts, strings.Join(lowers, ":"), upper, mnt)
}

// debugMount mounts with the options opts and the arguments args (the
// layers and the mount point), the debug log in a file, and returns a
// function counting the requests of each opcode logged so far. A panic in
// the daemon (go-fuse logs it and serves on) fails the test.
func debugMount(t *testing.T, opts []string, args ...string) (count func(op string) int) {
	t.Helper()
	log := filepath.Join(t.TempDir(), "debug.log")
	t.Cleanup(func() {
		data, _ := os.ReadFile(log)
		if bytes.Contains(data, []byte("panic")) {
			t.Errorf("the daemon panicked")
		}
		if t.Failed() {
			t.Logf("debug log:\n%s", data)
		}
	})
	mountUnion(t, append([]string{"-o", strings.Join(append([]string{"debug"}, opts...), ","), "--log", log}, args...)...)
	return func(op string) int {
		data, err := os.ReadFile(log)
		if err != nil {
			t.Fatal(err)
		}
		return len(regexp.MustCompile(`rx \d+: `+op+` `).FindAll(data, -1))
	}
}

// TestPassthroughSkipsTheDaemon writes a new file, appends to a lower file
// and reads both back, as root: with passthrough no READ or WRITE request
// reaches the daemon, the data is right and the lower is unchanged. With
// -o passthrough=off the same work goes through the daemon.
func TestPassthroughSkipsTheDaemon(t *testing.T) {
	needRoot(t)
	for _, mode := range []string{"on", "off"} {
		t.Run(mode, func(t *testing.T) {
			lowers, upper, mnt := semStack(t, 1)
			semWrite(t, filepath.Join(lowers[0], "f"), "lower\n", 0o644)
			before := layerState(t, lowers[0])
			count := ptMount(t, lowers, upper, mnt, "passthrough="+mode)
			big := strings.Repeat("0123456789abcdef", 1<<16)
			if err := os.WriteFile(filepath.Join(mnt, "new"), []byte(big), 0o644); err != nil {
				t.Fatal(err)
			}
			fh, err := os.OpenFile(filepath.Join(mnt, "f"), os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := fh.WriteString("appended\n"); err != nil {
				t.Fatal(err)
			}
			fh.Close()
			// Reads come from the disk, not from pages the writes left.
			if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
				t.Fatal(err)
			}
			if got := semRead(filepath.Join(mnt, "new")); got != big {
				t.Errorf("new reads %d bytes back, want the %d written", len(got), len(big))
			}
			if got := semRead(filepath.Join(mnt, "f")); got != "lower\nappended\n" {
				t.Errorf("f reads %q", got)
			}
			if got := semRead(filepath.Join(upper, "f")); got != "lower\nappended\n" {
				t.Errorf("upper f is %q", got)
			}
			if after := layerState(t, lowers[0]); after != before {
				t.Errorf("the lower changed: %s", firstDiffLine(before, after))
			}
			reads, writes := count("READ"), count("WRITE")
			if mode == "on" && (reads != 0 || writes != 0) {
				t.Errorf("passthrough: the daemon got %d READ and %d WRITE requests, want none", reads, writes)
			}
			if mode == "off" && (reads == 0 || writes == 0) {
				t.Errorf("passthrough=off: the daemon got %d READ and %d WRITE requests, want some of each", reads, writes)
			}
		})
	}
}

// TestPassthroughCommit commits while a file is open for writing through
// passthrough: the layer holds the file as it was at the commit, writes
// through the same descriptor afterwards land in the upper (same inode),
// and a hard-linked open file makes the commit fail before it changes
// anything.
func TestPassthroughCommit(t *testing.T) {
	needRoot(t)
	l := newLab(t)
	// Passthrough asked for: by default the kernel opens files itself
	// (fs/noopen.go), and then nothing is opened through passthrough.
	count := ptMount(t, strings.Split(l.lowers(), ":"), l.upper, l.merged, "passthrough=on")
	p := filepath.Join(l.merged, "etc", "live")
	fh, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	if _, err := fh.WriteString("one\n"); err != nil {
		t.Fatal(err)
	}
	var before unix.Stat_t
	if err := unix.Stat(p, &before); err != nil {
		t.Fatal(err)
	}
	listing := fullListing(t, l.merged)
	var etc unix.Stat_t
	if err := unix.Stat(filepath.Join(l.merged, "etc"), &etc); err != nil {
		t.Fatal(err)
	}
	commitMount(t, nil, l.merged)
	checkListing(t, "merged view after the commit (want: as before it)", fullListing(t, l.merged), listing)
	layer := filepath.Join(l.work, "layers", "1")
	// Keeping the file in the upper moves no directory's times.
	for _, d := range []string{filepath.Join(layer, "etc"), filepath.Join(l.upper, "etc")} {
		var st unix.Stat_t
		if err := unix.Lstat(d, &st); err != nil {
			t.Fatal(err)
		}
		if st.Mtim != etc.Mtim {
			t.Errorf("%s has mtime %v after the commit, want %v as the merged etc had", d, st.Mtim, etc.Mtim)
		}
	}
	frozen := layerState(t, layer)
	if _, err := fh.WriteString("two\n"); err != nil {
		t.Fatal(err)
	}
	if got := semRead(filepath.Join(layer, "etc", "live")); got != "one\n" {
		t.Errorf("committed layer holds %q, want the file as at the commit", got)
	}
	if got := semRead(p); got != "one\ntwo\n" {
		t.Errorf("merged file reads %q after writing on past the commit", got)
	}
	if got := semRead(filepath.Join(l.upper, "etc", "live")); got != "one\ntwo\n" {
		t.Errorf("upper file is %q", got)
	}
	if now := layerState(t, layer); now != frozen {
		t.Errorf("a write after the commit changed the committed layer: %s", firstDiffLine(frozen, now))
	}
	var after unix.Stat_t
	if err := unix.Stat(p, &after); err != nil {
		t.Fatal(err)
	}
	if after.Ino != before.Ino {
		t.Errorf("st_ino changed across the commit: %d, then %d", before.Ino, after.Ino)
	}
	if n := count("WRITE"); n != 0 {
		t.Errorf("the daemon got %d WRITE requests; the test needs passthrough", n)
	}

	// A second name for the open file: the commit refuses.
	if err := os.Link(p, filepath.Join(l.merged, "etc", "second")); err != nil {
		t.Fatal(err)
	}
	out, errOut, err := um(nil, "commit", l.merged)
	if err == nil || !strings.Contains(errOut, "open for writing") || !strings.Contains(errOut, "2 links") {
		t.Errorf("commit with an open hard-linked passthrough file: %v, stdout %q, stderr %q; want a failure naming it", err, out, errOut)
	}
	if _, err := os.Stat(filepath.Join(l.work, "layers", "2")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the refused commit left layers/2 behind: %v", err)
	}

	// A remount shows what the live mount showed.
	fh.Close()
	final := fullListing(t, l.merged)
	unmount(t, l.merged)
	waitNoDaemon(t, l.merged)
	mountUnion(t, l.lowers(), l.upper, l.merged)
	checkListing(t, "merged view after a remount", fullListing(t, l.merged), final)
}

// TestPassthroughPrivileges: a user other than root who opens a setuid
// file for writing while root has it open through passthrough loses the
// setuid bit at the open (the kernel would clear it at the first write,
// which here does not reach the daemon), and while that user's handle is
// open the file cannot be made setuid (ETXTBSY).
func TestPassthroughPrivileges(t *testing.T) {
	needRoot(t)
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("setpriv not installed")
	}
	lowers, upper, mnt := semStack(t, 1)
	for _, d := range []string{filepath.Dir(mnt), filepath.Dir(filepath.Dir(mnt))} {
		os.Chmod(d, 0o755)
	}
	count := ptMount(t, lowers, upper, mnt, "passthrough=on")
	p := filepath.Join(mnt, "s")
	if err := os.WriteFile(p, []byte("data\n"), 0o777); err != nil {
		t.Fatal(err)
	}
	held, err := os.Open(p) // root's passthrough handle
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if err := unix.Chmod(p, 0o4777); err != nil {
		t.Fatalf("chmod u+s with only root's handle open: %v", err)
	}
	// nobody opens it for writing and keeps it open (a FIFO holds the
	// shell until the test is done).
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := unix.Mkfifo(fifo, 0o666); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Dir(fifo), 0o755)
	cmd := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
		"sh", "-c", `exec 3>>"$0"; echo opened; read x < "$1"; echo more >&3`, p, fifo)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := false
	t.Cleanup(func() {
		if !done {
			os.WriteFile(fifo, []byte("go\n"), 0)
			cmd.Wait()
		}
	})
	buf := make([]byte, 7)
	if _, err := stdout.Read(buf); err != nil || string(buf) != "opened\n" {
		t.Fatalf("nobody's shell: %q, %v", buf, err)
	}
	mode := func() os.FileMode {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Mode()
	}
	if m := mode(); m&os.ModeSetuid != 0 {
		t.Errorf("mode %v after nobody opened the file for writing, want setuid cleared", m)
	}
	if err := unix.Chmod(p, 0o4777); !errors.Is(err, syscall.ETXTBSY) {
		t.Errorf("chmod u+s while nobody has it open for writing: %v, want ETXTBSY", err)
	}
	if err := os.WriteFile(fifo, []byte("go\n"), 0); err != nil {
		t.Fatal(err)
	}
	done = true
	if err := cmd.Wait(); err != nil {
		t.Fatalf("nobody's write: %v", err)
	}
	if got := semRead(p); got != "data\nmore\n" {
		t.Errorf("file reads %q", got)
	}
	// The release of nobody's handle reaches the daemon after the close.
	for i := 0; ; i++ {
		err := unix.Chmod(p, 0o4777)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.ETXTBSY) || i == 100 {
			t.Errorf("chmod u+s once nobody closed it: %v", err)
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := count("WRITE"); n != 0 {
		t.Errorf("the daemon got %d WRITE requests; the test needs passthrough", n)
	}
}
