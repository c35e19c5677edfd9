package integration

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestAttributesOfAFileOpenForWriting changes a file's times, owner, mode
// and size by name while it is open for writing, as tar does with each file
// it extracts (the daemon then makes the changes through the open
// descriptor, fs/attr.go). Every change shows through the mount and in the
// upper at once, after a rename too; after a commit froze the file, the
// changes reach its new copy in the upper and never the committed layer.
func TestAttributesOfAFileOpenForWriting(t *testing.T) {
	lowers, upper, mnt := semStack(t, 1)
	mountUnion(t, lowers[0], upper, mnt)
	work := filepath.Join(filepath.Dir(upper), ".upper.work")
	m := func(p string) string { return filepath.Join(mnt, p) }

	type attrs struct {
		mode     uint32
		uid, gid uint32
		mtime    int64
		size     int64
	}
	statOf := func(p string) attrs {
		t.Helper()
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			t.Fatalf("stat %s: %v", p, err)
		}
		return attrs{st.Mode & 0o7777, st.Uid, st.Gid, st.Mtim.Sec, st.Size}
	}
	check := func(what, rel string, want attrs) {
		t.Helper()
		if got := statOf(m(rel)); got != want {
			t.Errorf("%s: merged %s is %+v, want %+v", what, rel, got, want)
		}
		if got := statOf(filepath.Join(upper, rel)); got != want {
			t.Errorf("%s: upper %s is %+v, want %+v", what, rel, got, want)
		}
	}

	f, err := os.OpenFile(m("f"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString("data\n"); err != nil {
		t.Fatal(err)
	}
	uid, gid := uint32(os.Getuid()), uint32(os.Getgid())
	want := attrs{0o600, uid, gid, 0, 5}

	mt := time.Unix(1500000000, 0)
	if err := os.Chtimes(m("f"), mt, mt); err != nil {
		t.Fatal(err)
	}
	want.mtime = mt.Unix()
	check("utimes", "f", want)
	if os.Getuid() == 0 {
		if err := os.Chown(m("f"), 1234, 5678); err != nil {
			t.Fatal(err)
		}
		want.uid, want.gid = 1234, 5678
		check("chown", "f", want)
	}
	if err := os.Chmod(m("f"), 0o640); err != nil {
		t.Fatal(err)
	}
	want.mode = 0o640
	check("chmod", "f", want)
	if err := os.Truncate(m("f"), 3); err != nil {
		t.Fatal(err)
	}
	want.size = 3
	want.mtime = statOf(m("f")).mtime // a truncate moves it
	check("truncate", "f", want)

	if err := os.Rename(m("f"), m("g")); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(m("g"), 0o604); err != nil {
		t.Fatal(err)
	}
	want.mode = 0o604
	check("chmod after a rename", "g", want)

	commitMount(t, nil, mnt)
	frozen := filepath.Join(work, "layers", "1", "g")
	if got := statOf(frozen); got != want {
		t.Fatalf("committed g is %+v, want %+v", got, want)
	}
	if err := os.Chmod(m("g"), 0o644); err != nil {
		t.Fatal(err)
	}
	mt2 := time.Unix(1600000000, 0)
	if err := os.Chtimes(m("g"), mt2, mt2); err != nil {
		t.Fatal(err)
	}
	after := want
	after.mode, after.mtime = 0o644, mt2.Unix()
	check("chmod and utimes after the commit", "g", after)
	if got := statOf(frozen); got != want {
		t.Errorf("the committed g changed: %+v, want %+v", got, want)
	}

	// The descriptor still writes to the file the mount shows.
	if _, err := f.WriteAt([]byte("X"), 0); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(m("g")); err != nil || string(b) != "Xat" {
		t.Errorf("g reads %q, %v; want %q", b, err, "Xat")
	}
}
