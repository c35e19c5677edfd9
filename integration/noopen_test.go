package integration

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// TestReadOnlyUnionOpensWithoutTheDaemon: on a read-only union the kernel
// opens files itself (fs/noopen.go). Reads of many files held open at
// once, reads from several programs at once, SEEK_DATA and SEEK_HOLE, a
// shared mapping and fsync must all work without an OPEN or RELEASE
// reaching the daemon, which must hold descriptors for a bounded number of
// files only. With -o timeout=0, where the lowers may change, every open
// reaches the daemon again.
func TestReadOnlyUnionOpensWithoutTheDaemon(t *testing.T) {
	const nFiles = 150 // more than the daemon keeps descriptors for (64)
	content := func(i int) string {
		return strings.Repeat(fmt.Sprintf("file %d\n", i), 1+i%40)
	}
	setup := func(t *testing.T) (lowers []string, upper, mnt string, want map[string]string) {
		lowers, upper, mnt = semStack(t, 2)
		want = map[string]string{}
		for i := range nFiles {
			// Two in three shadow a file of the bottom lower.
			name, top := fmt.Sprintf("many/f%03d", i), lowers[0]
			if i%3 == 0 {
				top = lowers[1]
			}
			semWrite(t, filepath.Join(lowers[1], name), "shadowed\n", 0o644)
			semWrite(t, filepath.Join(top, name), content(i), 0o644)
			want[name] = content(i)
		}
		big := bytes.Repeat([]byte("0123456789abcdef"), 3<<20/16)
		if err := os.WriteFile(filepath.Join(lowers[1], "big"), big, 0o644); err != nil {
			t.Fatal(err)
		}
		want["big"] = string(big)
		// Data at 0 and at 8 MiB, a hole between.
		f, err := os.Create(filepath.Join(lowers[0], "sparse"))
		if err != nil {
			t.Fatal(err)
		}
		for _, off := range []int64{0, 8 << 20} {
			if _, err := f.WriteAt(bytes.Repeat([]byte{'s'}, 4096), off); err != nil {
				t.Fatal(err)
			}
		}
		f.Close()
		semWrite(t, filepath.Join(upper, "u"), "upper\n", 0o644)
		return lowers, upper, mnt, want
	}

	t.Run("NoUpper", func(t *testing.T) {
		lowers, _, mnt, want := setup(t)
		count := debugMount(t, nil, strings.Join(lowers, ":"), mnt)
		readWant(t, mnt, want)
		heldOpen(t, mnt, want)
		concurrentReads(t, mnt, want)
		seeks(t, filepath.Join(lowers[0], "sparse"), filepath.Join(mnt, "sparse"))
		mapped(t, filepath.Join(mnt, "big"), want["big"])
		readWant(t, mnt, want) // again, from the page cache

		if fds := daemonFds(t, mnt); fds > 64+32 {
			t.Errorf("the daemon holds %d descriptors after reading %d files", fds, nFiles)
		}
		noOpens(t, count)
	})

	t.Run("ReadOnlyFlag", func(t *testing.T) {
		lowers, upper, mnt, want := setup(t)
		want["u"] = "upper\n"
		count := debugMount(t, nil, "--read-only", strings.Join(lowers, ":"), upper, mnt)
		readWant(t, mnt, want)
		heldOpen(t, mnt, want)
		noOpens(t, count)
	})

	t.Run("TimeoutZero", func(t *testing.T) {
		lowers, _, mnt, want := setup(t)
		count := debugMount(t, []string{"timeout=0"}, strings.Join(lowers, ":"), mnt)
		readWant(t, mnt, want)
		if n := count("OPEN"); n < len(want) {
			t.Errorf("%d OPEN requests for %d opens with timeout=0", n, len(want))
		}
	})
}

// noOpens checks that the kernel opened the files itself: the first OPEN
// and FLUSH are answered ENOSYS and none follow, nor any RELEASE, while
// READs did reach the daemon.
func noOpens(t *testing.T, count func(op string) int) {
	t.Helper()
	for op, most := range map[string]int{"OPEN": 1, "FLUSH": 1, "RELEASE": 0} {
		if n := count(op); n > most {
			t.Errorf("%d %s requests reached the daemon, want at most %d", n, op, most)
		}
	}
	if count("READ") == 0 {
		t.Errorf("no READ reached the daemon: the test read nothing through it")
	}
}

// readWant reads every file of want below mnt whole.
func readWant(t *testing.T, mnt string, want map[string]string) {
	t.Helper()
	for name, w := range want {
		if got := semRead(filepath.Join(mnt, name)); got != w {
			t.Errorf("%s reads %.40q (%d bytes), want %d bytes", name, got, len(got), len(w))
		}
	}
}

// heldOpen opens every file of want and reads them in turns, a few bytes
// at a time, all descriptors open at once.
func heldOpen(t *testing.T, mnt string, want map[string]string) {
	t.Helper()
	files := map[string]*os.File{}
	for name := range want {
		f, err := os.Open(filepath.Join(mnt, name))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		files[name] = f
	}
	got := map[string][]byte{}
	for off := int64(0); ; off += 7 {
		more := false
		for name, f := range files {
			buf := make([]byte, 7)
			n, _ := f.ReadAt(buf, off)
			got[name] = append(got[name], buf[:n]...)
			more = more || n == len(buf)
		}
		if !more || off > 1<<12 {
			break
		}
	}
	for name, w := range want {
		if n := min(len(w), len(got[name])); string(got[name][:n]) != w[:n] || n < min(len(w), 4096) {
			t.Errorf("%s read in turns: %d bytes, not its first %d", name, len(got[name]), min(len(w), 4096))
		}
	}
}

// concurrentReads reads the files of want from eight goroutines at once,
// each its own files.
func concurrentReads(t *testing.T, mnt string, want map[string]string) {
	t.Helper()
	var names []string
	for name := range want {
		names = append(names, name)
	}
	var wg sync.WaitGroup
	errs := make(chan string, len(names))
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := g; i < len(names); i += 8 {
				p := filepath.Join(mnt, names[i])
				for range 3 {
					if got := semRead(p); got != want[names[i]] {
						errs <- fmt.Sprintf("%s reads %d bytes, want %d", names[i], len(got), len(want[names[i]]))
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

// seeks compares SEEK_DATA and SEEK_HOLE through the mount with the lower
// file's own.
func seeks(t *testing.T, lower, merged string) {
	t.Helper()
	lf, err := os.Open(lower)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	mf, err := os.Open(merged)
	if err != nil {
		t.Fatal(err)
	}
	defer mf.Close()
	for _, off := range []int64{0, 4096, 1 << 20, 8 << 20} {
		for _, whence := range []int{unix.SEEK_DATA, unix.SEEK_HOLE} {
			lo, lerr := unix.Seek(int(lf.Fd()), off, whence)
			mo, merr := unix.Seek(int(mf.Fd()), off, whence)
			if lo != mo || (lerr == nil) != (merr == nil) {
				t.Errorf("lseek(%d, whence %d): merged %d %v, lower %d %v", off, whence, mo, merr, lo, lerr)
			}
		}
	}
	if err := mf.Sync(); err != nil {
		t.Errorf("fsync of a file opened read-only: %v", err)
	}
}

// mapped maps p shared and compares it with want.
func mapped(t *testing.T, p, want string) {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := unix.Mmap(int(f.Fd()), 0, len(want), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	if string(m) != want {
		t.Errorf("a shared mapping of %s differs from its content", p)
	}
}

// daemonFds counts the open descriptors of the daemon serving mnt.
func daemonFds(t *testing.T, mnt string) int {
	t.Helper()
	pids := daemons(t, binary, mnt)
	if len(pids) != 1 {
		t.Fatalf("daemons serving %s: %v", mnt, pids)
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pids[0]))
	if err != nil {
		t.Fatal(err)
	}
	return len(fds)
}

// TestWritableUnionOpensWithoutTheDaemon: on a writable union mounted with
// default_permissions (as root) the kernel opens files itself too
// (fs/noopen.go). A lower file is then copied up at its first write, not
// at an open for writing; descriptors opened before an unlink or a rename
// over their file go on reading and writing it; a reader sees what a
// writer of the same file wrote, through the page cache or not; and no
// OPEN, FLUSH or RELEASE reaches the daemon but for the files it creates.
func TestWritableUnionOpensWithoutTheDaemon(t *testing.T) {
	needRoot(t)
	setup := func(t *testing.T, opts ...string) (lower, upper, mnt string, count func(string) int) {
		lowers, upper, mnt := semStack(t, 1)
		semWrite(t, filepath.Join(lowers[0], "l"), "lower\n", 0o644)
		semWrite(t, filepath.Join(lowers[0], "victim"), "victim\n", 0o644)
		semWrite(t, filepath.Join(upper, "u"), "upper\n", 0o644)
		return lowers[0], upper, mnt, ptMount(t, lowers, upper, mnt, opts...)
	}
	open := func(t *testing.T, p string, flag int) *os.File {
		t.Helper()
		f, err := os.OpenFile(p, flag, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	readAt := func(t *testing.T, f *os.File, want string) {
		t.Helper()
		buf := make([]byte, len(want)+8)
		n, err := f.ReadAt(buf, 0)
		if err != nil && err != io.EOF || string(buf[:n]) != want {
			t.Errorf("%s reads %q (%v), want %q", f.Name(), buf[:n], err, want)
		}
	}

	t.Run("CopyUpAtFirstWrite", func(t *testing.T) {
		lower, upper, mnt, count := setup(t)
		p := filepath.Join(mnt, "l")
		ro := open(t, p, os.O_RDONLY)
		readAt(t, ro, "lower\n")
		rw := open(t, p, os.O_RDWR)
		readAt(t, rw, "lower\n")
		if _, err := os.Lstat(filepath.Join(upper, "l")); !os.IsNotExist(err) {
			t.Errorf("open for writing without a write copied the file up: %v", err)
		}
		if _, err := rw.WriteAt([]byte("LOW"), 0); err != nil {
			t.Fatal(err)
		}
		if got := semRead(filepath.Join(upper, "l")); got != "LOWer\n" {
			t.Errorf("upper after the first write: %q, want %q", got, "LOWer\n")
		}
		if got := semRead(filepath.Join(lower, "l")); got != "lower\n" {
			t.Errorf("lower changed: %q", got)
		}
		// The read-only descriptor opened before the copy-up follows it.
		readAt(t, ro, "LOWer\n")
		// O_TRUNC copies up an empty file, without the data.
		tr := open(t, filepath.Join(mnt, "victim"), os.O_WRONLY|os.O_TRUNC)
		tr.Close()
		if st := semLstat(t, filepath.Join(upper, "victim")); st.Size != 0 {
			t.Errorf("upper victim after O_TRUNC: %d bytes", st.Size)
		}
		if got := semRead(filepath.Join(lower, "victim")); got != "victim\n" {
			t.Errorf("lower victim changed: %q", got)
		}
		noOpens(t, count)
	})

	t.Run("Unlinked", func(t *testing.T) {
		lower, upper, mnt, count := setup(t)
		fds := map[string][2]*os.File{}
		for _, name := range []string{"u", "l"} {
			fds[name] = [2]*os.File{open(t, filepath.Join(mnt, name), os.O_RDONLY), open(t, filepath.Join(mnt, name), os.O_RDWR)}
			if err := os.Remove(filepath.Join(mnt, name)); err != nil {
				t.Fatal(err)
			}
		}
		semWrite(t, filepath.Join(mnt, "u"), "new u\n", 0o644)
		for name, old := range map[string]string{"u": "upper\n", "l": "lower\n"} {
			ro, rw := fds[name][0], fds[name][1]
			readAt(t, ro, old)
			if _, err := rw.WriteAt([]byte("W"), 0); err != nil {
				t.Errorf("write to unlinked %s: %v", name, err)
			}
			readAt(t, rw, "W"+old[1:])
			if name == "u" {
				// One file for both descriptors, as on any
				// filesystem. (An unlinked lower file written to
				// gets a private copy, as with the kernel's
				// overlayfs; the read-only descriptor keeps the
				// lower one.)
				readAt(t, ro, "W"+old[1:])
			}
			var st unix.Stat_t
			if err := unix.Fstat(int(rw.Fd()), &st); err != nil || st.Nlink != 0 {
				t.Errorf("fstat of unlinked %s: nlink %d, %v", name, st.Nlink, err)
			}
		}
		if got := semRead(filepath.Join(mnt, "u")); got != "new u\n" {
			t.Errorf("the new u reads %q", got)
		}
		if got := semRead(filepath.Join(lower, "l")); got != "lower\n" {
			t.Errorf("lower l changed: %q", got)
		}
		if st := semLstat(t, filepath.Join(upper, "l")); st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
			t.Errorf("upper l is not a whiteout: mode %o", st.Mode)
		}
		// A rename over an open file.
		v := open(t, filepath.Join(mnt, "victim"), os.O_RDONLY)
		semWrite(t, filepath.Join(mnt, "other"), "other\n", 0o644)
		if err := os.Rename(filepath.Join(mnt, "other"), filepath.Join(mnt, "victim")); err != nil {
			t.Fatal(err)
		}
		readAt(t, v, "victim\n")
		if got := semRead(filepath.Join(mnt, "victim")); got != "other\n" {
			t.Errorf("victim after the rename: %q", got)
		}
		if n := count("OPEN"); n > 1 {
			t.Errorf("%d OPEN requests", n)
		}
	})

	t.Run("ReaderOfAWriter", func(t *testing.T) {
		_, upper, mnt, count := setup(t)
		p := filepath.Join(mnt, "log")
		w := open(t, p, os.O_WRONLY|os.O_CREATE|os.O_APPEND)
		r := open(t, p, os.O_RDONLY)
		var want string
		for i := range 50 {
			line := fmt.Sprintf("line %d\n", i)
			if _, err := w.WriteString(line); err != nil {
				t.Fatal(err)
			}
			want += line
			readAt(t, r, want)
		}
		if got := semRead(filepath.Join(upper, "log")); got != want {
			t.Errorf("upper log: %d bytes, want %d", len(got), len(want))
		}
		// A shared writable mapping of a lower file: its writes reach
		// the upper copy, and the lower stays as it was.
		m := open(t, filepath.Join(mnt, "victim"), os.O_RDWR)
		data, err := unix.Mmap(int(m.Fd()), 0, 7, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			t.Fatal(err)
		}
		copy(data, "VIC")
		if err := unix.Msync(data, unix.MS_SYNC); err != nil {
			t.Error(err)
		}
		unix.Munmap(data)
		if got := semRead(filepath.Join(upper, "victim")); got != "VICtim\n" {
			t.Errorf("upper victim after a shared mapping's write: %q", got)
		}
		if n := count("CREATE"); n != 1 {
			t.Errorf("%d CREATE requests, want 1", n)
		}
		if n := count("OPEN"); n > 1 {
			t.Errorf("%d OPEN requests", n)
		}
	})

	t.Run("ManyWritten", func(t *testing.T) {
		const nFiles = 150 // more than the daemon keeps descriptors for
		lowers, upper, mnt := semStack(t, 1)
		for i := range nFiles {
			semWrite(t, filepath.Join(lowers[0], fmt.Sprintf("f%03d", i)), "........\n", 0o644)
		}
		count := ptMount(t, lowers, upper, mnt)
		var files []*os.File
		for i := range nFiles {
			files = append(files, open(t, filepath.Join(mnt, fmt.Sprintf("f%03d", i)), os.O_RDWR))
		}
		for off := range 8 { // each file written a byte at a time, in turns
			for i, f := range files {
				if _, err := f.WriteAt([]byte{byte('a' + (i+off)%26)}, int64(off)); err != nil {
					t.Fatal(err)
				}
			}
		}
		for i := range nFiles {
			want := make([]byte, 8)
			for off := range want {
				want[off] = byte('a' + (i+off)%26)
			}
			name := fmt.Sprintf("f%03d", i)
			readAt(t, files[i], string(want)+"\n")
			if got := semRead(filepath.Join(upper, name)); got != string(want)+"\n" {
				t.Errorf("upper %s: %q, want %q", name, got, string(want)+"\n")
			}
			if got := semRead(filepath.Join(lowers[0], name)); got != "........\n" {
				t.Errorf("lower %s changed: %q", name, got)
			}
		}
		if fds := daemonFds(t, mnt); fds > 64+32 {
			t.Errorf("the daemon holds %d descriptors with %d files written", fds, nFiles)
		}
		noOpens(t, count)
	})

	t.Run("PassthroughOn", func(t *testing.T) {
		_, _, mnt, count := setup(t, "passthrough=on")
		for range 3 {
			semRead(filepath.Join(mnt, "u"))
		}
		if n := count("OPEN"); n < 3 {
			t.Errorf("%d OPEN requests for 3 opens with passthrough=on", n)
		}
	})
}
