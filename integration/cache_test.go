package integration

import (
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestCachesFollowChanges checks that the kernel's long-lived caches (names,
// attributes, failed lookups, directory listings, file pages) never show
// an old state: it warms them all, then makes each kind of change through
// the mount and checks that the very next lookup, stat, readdir and read
// see it, with the default timeout and with -o timeout=0.
func TestCachesFollowChanges(t *testing.T) {
	for _, opt := range []string{"", "timeout=0"} {
		t.Run("opts="+opt, func(t *testing.T) { testCachesFollowChanges(t, opt) })
	}
}

func testCachesFollowChanges(t *testing.T, opt string) {
	lowers, upper, mnt := semStack(t, 1)
	l := lowers[0]
	semWrite(t, filepath.Join(l, "f"), "lower f\n", 0o644)
	semWrite(t, filepath.Join(l, "g"), "lower g\n", 0o644)
	semWrite(t, filepath.Join(l, "h"), "lower h\n", 0o644)
	semWrite(t, filepath.Join(l, "d", "in"), "in d\n", 0o644)
	semWrite(t, filepath.Join(l, "e", "old"), "old\n", 0o644)
	semWrite(t, filepath.Join(l, "n", "sub", "f"), "lower n/sub/f\n", 0o644)
	semWrite(t, filepath.Join(l, "n", "g"), "lower n/g\n", 0o644)
	semWrite(t, filepath.Join(l, "n", "h"), "lower n/h\n", 0o644)
	args := []string{l, upper, mnt}
	if opt != "" {
		args = append([]string{"-o", opt}, args...)
	}
	mountUnion(t, args...)
	v := mountView{t, mnt}
	m, list, read, mode, want := v.path, v.list, v.read, v.mode, v.want

	warm := func() { v.warm("new", "gone", "d/new", "e/new") }

	warm()
	// Create over a cached negative entry, in a cached listing.
	if err := os.WriteFile(m("new"), []byte("new\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	want("read new", read("new"), "new\n")
	want("list /", list(""), "d e f g h n new")
	// Write into a lower file (copy-up) whose pages are cached.
	overwrite := func(p string) {
		t.Helper()
		fh, err := os.OpenFile(m(p), os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		_, err = fh.WriteAt([]byte("UPPER"), 0)
		if err := errors.Join(err, fh.Close()); err != nil {
			t.Fatal(err)
		}
	}
	overwrite("f")
	want("read f", read("f"), "UPPER f\n")
	// Truncate, chmod, unlink (whiteout), rename.
	if err := os.Truncate(m("g"), 2); err != nil {
		t.Fatal(err)
	}
	want("read g", read("g"), "lo")
	if err := os.Chmod(m("h"), 0o600); err != nil {
		t.Fatal(err)
	}
	want("mode h", mode("h"), "-rw-------")
	if err := os.Remove(m("new")); err != nil {
		t.Fatal(err)
	}
	want("stat removed", mode("new"), "error")
	if err := os.Rename(m("h"), m("gone")); err != nil {
		t.Fatal(err)
	}
	want("list / after rename", list(""), "d e f g gone n")
	want("read renamed", read("gone"), "lower h\n")
	// A directory removed and made again is empty; a lower directory
	// renamed keeps its contents under the new name only.
	if err := os.RemoveAll(m("d")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(m("d"), 0o755); err != nil {
		t.Fatal(err)
	}
	want("list d", list("d"), "")
	want("stat d/in", mode("d/in"), "error")
	if err := os.Rename(m("e"), m("e2")); err != nil {
		t.Fatal(err)
	}
	want("list e2", list("e2"), "old")
	want("stat e", mode("e"), "error")
	// In a directory that only the lower had when it was looked up,
	// until a copy-up below it made it in the upper: the changes made
	// there next show at once.
	overwrite("n/sub/f")
	if err := os.Remove(m("n/g")); err != nil {
		t.Fatal(err)
	}
	want("stat n/g after unlink", mode("n/g"), "error")
	if err := os.Rename(m("n/h"), m("n/h2")); err != nil {
		t.Fatal(err)
	}
	want("list n", list("n"), "h2 sub")
	want("read n/h2", read("n/h2"), "lower n/h\n")
	want("read n/sub/f", read("n/sub/f"), "UPPER n/sub/f\n")
	// A hard link and an xattr.
	if err := os.Link(m("f"), m("f2")); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(m("f"), &st); err != nil || st.Nlink != 2 {
		t.Errorf("nlink of f after link: %d, %v", st.Nlink, err)
	}
	if err := unix.Lsetxattr(m("g"), "user.k", []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	n, err := unix.Lgetxattr(m("g"), "user.k", buf)
	want("xattr", string(buf[:max(n, 0)]), "v")
	if err != nil {
		t.Error(err)
	}

	// After a remount, everything reads the same: the caches held nothing
	// the upper does not.
	before := map[string]string{}
	for _, p := range []string{"f", "f2", "g", "gone", "e2/old"} {
		before[p] = read(p)
	}
	unmount(t, mnt)
	mountUnion(t, args...)
	for p, v := range before {
		want("after remount "+p, read(p), v)
	}
	want("list / after remount", list(""), "d e2 f f2 g gone n")
}

// TestListingOfKnownEntries checks the listings that answer an entry the
// kernel already has from its node, as a GETATTR of it would be answered,
// rather than by a lookup (fs/dir.go, dirHandle.Lookup): after changes of
// every kind made through the mount, before and after a commit, a walk of
// the mount (each listing followed by a stat of each entry it lists) shows
// what a fresh mount of the same layers shows: type, mode, owner, size,
// link count, inode number, mtime, content and xattrs.
func TestListingOfKnownEntries(t *testing.T) {
	lowers, upper, mnt := semStack(t, 2)
	l0, l1 := lowers[0], lowers[1]
	semWrite(t, filepath.Join(l1, "d", "bottom"), "bottom\n", 0o644)
	semWrite(t, filepath.Join(l1, "d", "both"), "l1 both\n", 0o644)
	semWrite(t, filepath.Join(l0, "d", "both"), "l0 both\n", 0o600)
	semWrite(t, filepath.Join(l0, "d", "top"), "top\n", 0o644)
	semWrite(t, filepath.Join(l0, "d", "sub", "f"), "sub f\n", 0o644)
	semWrite(t, filepath.Join(l1, "e", "f"), "e f\n", 0o644)
	semWrite(t, filepath.Join(l0, "big"), strings.Repeat("x", 64<<10), 0o644)
	args := []string{l0 + ":" + l1, upper, mnt}
	mountUnion(t, args...)
	m := func(p string) string { return filepath.Join(mnt, p) }
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}

	fullListing(t, mnt) // the kernel now has a node for every entry
	// New files in new and merged directories, given attributes the way
	// tar x does after writing them.
	must(os.MkdirAll(m("new/deep"), 0o755))
	for i, p := range []string{"new/a", "new/deep/b", "d/c"} {
		must(os.WriteFile(m(p), []byte(strings.Repeat("n", i+1)), 0o644))
		must(os.Chmod(m(p), 0o640))
		must(os.Chtimes(m(p), time.Unix(1e9, 0), time.Unix(1e9+int64(i), 0)))
	}
	// Copy-ups by a write, a chmod (metadata only) and a truncate; a
	// whiteout, a hard link, a symlink, and renames of a file and of a
	// directory.
	must(os.WriteFile(m("d/both"), []byte("upper both\n"), 0o644))
	must(os.Chmod(m("big"), 0o600))
	must(os.Truncate(m("d/top"), 2))
	must(os.Remove(m("d/bottom")))
	must(os.Link(m("new/a"), m("d/a-link")))
	must(os.Symlink("top", m("d/sym")))
	must(os.Rename(m("e/f"), m("d/from-e")))
	must(os.Rename(m("d/sub"), m("d/sub2")))
	fullListing(t, mnt)
	commitMount(t, nil, mnt)
	// Changes to what the commit froze.
	must(os.Chmod(m("new/a"), 0o600))
	must(os.WriteFile(m("d/c"), []byte("rewritten\n"), 0o644))
	must(os.Mkdir(m("d/sub2/inner"), 0o700))
	must(unix.Lsetxattr(m("d/sub2/f"), "user.k", []byte("v"), 0))
	got := fullListing(t, mnt)

	unmount(t, mnt)
	mountUnion(t, args...)
	checkListing(t, "a walk after the changes, against a fresh mount", got, fullListing(t, mnt))
}

// mountView reads a mount the way the cache tests check it, each read
// turned into a string to compare.
type mountView struct {
	t   *testing.T
	mnt string
}

func (v mountView) path(p string) string { return filepath.Join(v.mnt, p) }

// warm fills the kernel's caches: every name, attribute, listing and
// file page of the mount, and a failed lookup of each of negative.
func (v mountView) warm(negative ...string) {
	filepath.Walk(v.mnt, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			os.ReadFile(p)
		}
		return nil
	})
	for _, p := range negative {
		os.Lstat(v.path(p))
	}
}

// read returns the contents of p, or the error.
func (v mountView) read(p string) string {
	b, err := os.ReadFile(v.path(p))
	if err != nil {
		return "error: " + err.Error()
	}
	return string(b)
}

// list returns the sorted names in dir, or the error.
func (v mountView) list(dir string) string {
	ents, err := os.ReadDir(v.path(dir))
	if err != nil {
		return "error: " + err.Error()
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return strings.Join(names, " ")
}

// mode returns the mode of p as ls shows it, or "error".
func (v mountView) mode(p string) string {
	fi, err := os.Lstat(v.path(p))
	if err != nil {
		return "error"
	}
	return fi.Mode().String()
}

func (v mountView) want(what, got, want string) {
	v.t.Helper()
	if got != want {
		v.t.Errorf("%s: got %q, want %q", what, got, want)
	}
}
