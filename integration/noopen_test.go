package integration

import (
	"bytes"
	"fmt"
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
