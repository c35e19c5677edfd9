package integration

import (
	"bytes"
	enc "encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestListingsWithoutOpendir checks directory listings now that the kernel
// opens directories without asking the daemon (fs/opendir.go): no OPENDIR
// or RELEASEDIR request reaches it, and every listing still holds each
// entry exactly once when it is read in small pieces, when hundreds of
// listings are left half read (more than the daemon keeps handles for),
// when programs seek in a listing, when eight of them read one directory at
// once, and, as root, when the kernel drops its cached listings and
// forgets the directories in the middle of all that. With -o timeout=0,
// OPENDIR stays, and the same listings come out.
func TestListingsWithoutOpendir(t *testing.T) {
	for _, opt := range []string{"timeout=86400", "timeout=0"} {
		t.Run(opt, func(t *testing.T) { testListings(t, opt) })
	}
}

func testListings(t *testing.T, opt string) {
	lowers, upper, mnt := semStack(t, 2)
	name := func(i int) string { return fmt.Sprintf("entry-with-a-longer-name-%04d", i) }
	var want []string
	for i := range 1500 {
		// 0-999 in the top lower, 500-1499 in the bottom one.
		if i < 1000 {
			semWrite(t, filepath.Join(lowers[0], "big", name(i)), "top", 0o644)
		}
		if i >= 500 {
			semWrite(t, filepath.Join(lowers[1], "big", name(i)), "bottom", 0o644)
		}
		want = append(want, name(i))
	}
	const small = 300 // more than the daemon keeps waiting listings of
	smallWant := map[string][]string{}
	for d := range small {
		dir := fmt.Sprintf("d%03d", d)
		for i := range 40 {
			semWrite(t, filepath.Join(lowers[1], dir, name(i)), "", 0o644)
			smallWant[dir] = append(smallWant[dir], name(i))
		}
	}
	// adir and adir/sub, for atimes.
	old := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	adir := filepath.Join(lowers[0], "adir")
	semWrite(t, filepath.Join(adir, "sub", "f"), "f", 0o644)
	for _, p := range []string{filepath.Join(adir, "sub"), adir} {
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	count := ptMount(t, lowers, upper, mnt, opt)
	big := filepath.Join(mnt, "big")
	// Changes through the mount: whiteouts, a new file, an upper
	// directory.
	for i := 0; i < 1500; i += 100 {
		if err := os.Remove(filepath.Join(big, name(i))); err != nil {
			t.Fatal(err)
		}
		want = slices.DeleteFunc(want, func(s string) bool { return s == name(i) })
	}
	semWrite(t, filepath.Join(big, "new"), "new", 0o644)
	want = append(want, "new")
	slices.Sort(want)

	dropCaches := func() {
		if os.Geteuid() == 0 {
			if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	// In small pieces, twice: from the daemon, then from the cache.
	for range 2 {
		checkEntries(t, "big", listDir(t, big, 512), want)
	}
	dropCaches()
	checkEntries(t, "big after drop_caches", listDir(t, big, 1024), want)

	// Listings left half read, first closed, with the kernel
	// forgetting the directories, then open while all are finished.
	for d := range smallWant {
		fd := openDir(t, filepath.Join(mnt, d))
		getdents(t, fd, 512)
		unix.Close(fd)
	}
	dropCaches()
	fds := map[string]int{}
	got := map[string][]string{}
	for d := range smallWant {
		fd := openDir(t, filepath.Join(mnt, d))
		fds[d] = fd
		names, _ := getdents(t, fd, 512)
		got[d] = names
	}
	for d, fd := range fds {
		rest := readAll(t, fd)
		unix.Close(fd)
		checkEntries(t, d, append(got[d], rest...), smallWant[d])
	}
	dropCaches()
	for d := range smallWant {
		checkEntries(t, d+" after drop_caches", listDir(t, filepath.Join(mnt, d), 512), smallWant[d])
	}

	// Seeks: back to where telldir said, and back to the start.
	for range 2 {
		fd := openDir(t, big)
		first, _ := getdents(t, fd, 2048)
		pos, err := unix.Seek(fd, 0, unix.SEEK_CUR)
		if err != nil {
			t.Fatal(err)
		}
		rest := readAll(t, fd)
		dropCaches()
		if _, err := unix.Seek(fd, pos, unix.SEEK_SET); err != nil {
			t.Fatal(err)
		}
		if again := readAll(t, fd); !slices.Equal(again, rest) {
			t.Errorf("after a seek back to %d: %d entries, first %q; want %d, first %q", pos, len(again), head(again), len(rest), head(rest))
		}
		if _, err := unix.Seek(fd, 0, unix.SEEK_SET); err != nil {
			t.Fatal(err)
		}
		checkEntries(t, "big after rewind", readAll(t, fd), want)
		unix.Close(fd)
		checkEntries(t, "big in two parts", append(first, rest...), want)
	}

	// Eight programs at once, each seeing the whole directory.
	var wg sync.WaitGroup
	lists := make([][][]string, 8)
	errs := make([]error, 8)
	for g := range lists {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 5 {
				l, err := listNames(big, 512+g*512)
				if err != nil {
					errs[g] = err
					return
				}
				lists[g] = append(lists[g], l)
			}
		}()
	}
	for range 3 {
		dropCaches()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	for g, ls := range lists {
		for i, l := range ls {
			checkEntries(t, fmt.Sprintf("big, lister %d, listing %d", g, i), l, want)
		}
	}

	// A listing updates the atime of an upper directory when it is not
	// after the mtime or ctime (relatime, as the kernel mounts the
	// upper), even with the listing in the kernel's cache: after a
	// copy-up, a utimes and a rename.
	atime := func(p string) time.Time {
		t.Helper()
		listDir(t, p, 4096)
		st := semLstat(t, p)
		return time.Unix(st.Atim.Unix())
	}
	m := filepath.Join(mnt, "adir")
	for _, p := range []string{m, m + "/sub"} {
		if a := atime(p); !a.Equal(old) {
			t.Errorf("listing %s, a lower directory, set its atime to %v", p, a)
		}
	}
	if err := os.Chmod(filepath.Join(m, "sub", "f"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{m, m + "/sub"} {
		if a := atime(p); !a.After(old) {
			t.Errorf("listing %s after its copy-up left its atime at %v", p, a)
		}
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
		if a := atime(p); !a.After(old) {
			t.Errorf("listing %s after a utimes left its atime at %v", p, a)
		}
	}
	if err := os.Chtimes(m+"/sub", old, old); err != nil {
		t.Fatal(err)
	}
	listDir(t, m+"/sub", 4096)
	if err := os.Rename(m+"/sub", m+"/moved"); err != nil {
		t.Fatal(err)
	}
	if a := atime(m + "/moved"); !a.After(old) {
		t.Errorf("listing a renamed directory left its atime at %v", a)
	}

	// An fsync of a directory reaches it without a handle, and, not
	// being a listing, leaves its atime as it is, though due.
	if err := os.Chtimes(m+"/moved", old, old); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{big, m + "/moved"} {
		fd := openDir(t, p)
		if err := unix.Fsync(fd); err != nil {
			t.Errorf("fsync of %s: %v", p, err)
		}
		unix.Close(fd)
	}
	// In the upper: the kernel's cached attributes would hide a change.
	if st := semLstat(t, filepath.Join(upper, "adir", "moved")); !time.Unix(st.Atim.Unix()).Equal(old) {
		t.Errorf("an fsync of a directory moved its atime to %v", time.Unix(st.Atim.Unix()))
	}

	opendirs, readdirs := count("OPENDIR")+count("RELEASEDIR"), count("READDIR")+count("READDIRPLUS")
	if readdirs == 0 {
		t.Errorf("no READDIR in the debug log")
	}
	if opt == "timeout=0" {
		if opendirs == 0 {
			t.Errorf("with %s the daemon saw no OPENDIR", opt)
		}
	} else if opendirs > 1 {
		// The first OPENDIR is answered ENOSYS, which tells the kernel
		// to open directories itself from then on.
		t.Errorf("the daemon saw %d OPENDIR and RELEASEDIR requests, want at most 1", opendirs)
	}
}

// checkEntries checks that got holds each name of want exactly once, and
// nothing else but . and ..
func checkEntries(t *testing.T, what string, got, want []string) {
	t.Helper()
	got = slices.DeleteFunc(slices.Clone(got), func(s string) bool { return s == "." || s == ".." })
	slices.Sort(got)
	if slices.Equal(got, want) {
		return
	}
	seen := map[string]int{}
	for _, n := range got {
		seen[n]++
	}
	var dups, missing, extra []string
	for n, c := range seen {
		if c > 1 {
			dups = append(dups, n)
		}
		if !slices.Contains(want, n) {
			extra = append(extra, n)
		}
	}
	for _, n := range want {
		if seen[n] == 0 {
			missing = append(missing, n)
		}
	}
	t.Errorf("%s: %d entries, want %d; twice: %q, missing: %q, extra: %q", what, len(got), len(want), head(dups), head(missing), head(extra))
}

func head(s []string) []string {
	if len(s) > 5 {
		return s[:5]
	}
	return s
}

func openDir(t *testing.T, dir string) int {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open %s: %v", dir, err)
	}
	return fd
}

// listDir lists dir with getdents64 calls of bufSize bytes each.
func listDir(t *testing.T, dir string, bufSize int) []string {
	t.Helper()
	names, err := listNames(dir, bufSize)
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func listNames(dir string, bufSize int) ([]string, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", dir, err)
	}
	defer unix.Close(fd)
	return readRest(fd, bufSize)
}

// readAll reads the rest of the listing of fd.
func readAll(t *testing.T, fd int) []string {
	t.Helper()
	names, err := readRest(fd, 4096)
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func readRest(fd, bufSize int) ([]string, error) {
	var all []string
	for {
		names, end, err := getdentsOnce(fd, bufSize)
		if err != nil {
			return nil, err
		}
		all = append(all, names...)
		if end {
			return all, nil
		}
	}
}

// getdents makes one getdents64 call of bufSize bytes on fd and returns
// the names, and whether the listing had ended.
func getdents(t *testing.T, fd, bufSize int) (names []string, end bool) {
	t.Helper()
	names, end, err := getdentsOnce(fd, bufSize)
	if err != nil {
		t.Fatal(err)
	}
	return names, end
}

func getdentsOnce(fd, bufSize int) (names []string, end bool, err error) {
	buf := make([]byte, bufSize)
	n, err := unix.Getdents(fd, buf)
	if err != nil {
		return nil, false, fmt.Errorf("getdents: %w", err)
	}
	for b := buf[:n]; len(b) > 0; {
		reclen := enc.NativeEndian.Uint16(b[16:18])
		name := b[19:reclen]
		if i := bytes.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		names = append(names, string(name))
		b = b[reclen:]
	}
	return names, n == 0, nil
}
