package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCachesFollowChangesAfterCommit is TestCachesFollowChanges across a
// live commit: with every kernel cache warm, the commit changes nothing the
// mount shows, and changes made afterwards to what the commit froze (now in
// a lower) are seen at once by the next lookup, stat, readdir and read.
func TestCachesFollowChangesAfterCommit(t *testing.T) {
	lowers, upper, mnt := semStack(t, 1)
	l := lowers[0]
	semWrite(t, filepath.Join(l, "f"), "lower f\n", 0o644)
	semWrite(t, filepath.Join(l, "d", "in"), "in d\n", 0o644)
	semWrite(t, filepath.Join(l, "big"), strings.Repeat("b", 128<<10), 0o644)
	mountUnion(t, l, upper, mnt)
	v := mountView{t, mnt}
	m, list, mode, want := v.path, v.list, v.mode, v.want
	read := func(p string) string {
		if got := v.read(p); len(got) > 32 {
			return got[:1] + "..." + got[len(got)-1:]
		}
		return v.read(p)
	}
	warm := func() { v.warm("later", "d/later") }

	// Before the commit: a new file, a copied-up one, a directory.
	if err := os.WriteFile(m("new"), []byte("new\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(m("f"), []byte("upper f\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(m("nd"), 0o755); err != nil {
		t.Fatal(err)
	}
	warm()
	commitMount(t, nil, mnt)
	want("read new after the commit", read("new"), "new\n")
	want("read f after the commit", read("f"), "upper f\n")
	want("list / after the commit", list(""), "big d f nd new")
	warm()

	// After it: each change to what the commit froze shows at once.
	if err := os.WriteFile(m("new"), []byte("changed\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	want("read new rewritten", read("new"), "changed\n")
	fh, err := os.OpenFile(m("f"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	fh.WriteString("more\n")
	fh.Close()
	want("read f appended", read("f"), "upper f\nmore\n")
	if err := os.Chmod(m("big"), 0o600); err != nil {
		t.Fatal(err)
	}
	want("mode big", mode("big"), "-rw-------")
	want("read big after chmod", read("big"), "b...b")
	if err := os.WriteFile(m("later"), []byte("later\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	want("read later (over a cached negative entry)", read("later"), "later\n")
	if err := os.Remove(m("f")); err != nil {
		t.Fatal(err)
	}
	want("stat f removed", mode("f"), "error")
	if err := os.Rename(m("nd"), m("nd2")); err != nil {
		t.Fatal(err)
	}
	want("list / after the changes", list(""), "big d later nd2 new")
	if err := os.WriteFile(m("d/later"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	want("list d", list("d"), "in later")

	// A remount shows what the caches showed.
	before := map[string]string{}
	for _, p := range []string{"new", "later", "big", "d/later"} {
		before[p] = read(p)
	}
	unmount(t, mnt)
	mountUnion(t, l, upper, mnt)
	for p, v := range before {
		want("after remount "+p, read(p), v)
	}
	want("list / after remount", list(""), "big d later nd2 new")
	want("mode big after remount", mode("big"), "-rw-------")
}
