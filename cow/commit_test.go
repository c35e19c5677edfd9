package cow

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// inodes returns the merged inode number and mtime of every path of the
// merged view.
func (ts *testStack) inodes(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for p := range ts.mergedDump(t, "") {
		rel := p
		if rel == "." {
			rel = ""
		}
		o := ts.mustLookup(t, rel)
		st, err := ts.Stat(o, rel)
		if err != nil {
			t.Fatal(err)
		}
		out[p] = fmt.Sprintf("ino %d mtime %d.%09d", st.Ino, st.Mtim.Sec, st.Mtim.Nsec)
	}
	return out
}

func TestCommit(t *testing.T) {
	requireRoot(t) // whiteouts are character devices
	ts := newTestStack(t, nil, []entry{
		file("a/f", "lower f"), file("a/g", "lower g"), file("d/x", "x"), dir("gone/sub"),
	})
	ts.create(t, "a/new", "new", Owner{})
	ts.unlink(t, "a/g")
	fd, _, err := ts.Open(ts.mustLookup(t, "a/f"), "a/f", unix.O_WRONLY)
	if err != nil {
		t.Fatal(err)
	}
	unix.Pwrite(fd, []byte("UPPER"), 0)
	unix.Close(fd)
	held := ts.mustLookup(t, "a/new") // an object found before the commit

	view, inos := ts.mergedDump(t, ""), ts.inodes(t)
	c, err := ts.Commit(nil)
	if err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if want := filepath.Join(ts.work, "layers", "1"); c.Dir != want {
		t.Errorf("layer dir %s, want %s", c.Dir, want)
	}
	if len(c.Lowers) != 1 || c.Lowers[0] != ts.lowers[0] {
		t.Errorf("lowers below the layer %v, want %v", c.Lowers, ts.lowers)
	}
	if c.Held <= 0 {
		t.Errorf("held %v", c.Held)
	}
	if ents, _ := os.ReadDir(ts.upper); len(ents) != 0 {
		t.Errorf("upper not empty after commit: %d entries", len(ents))
	}
	frozen := dumpTree(t, c.Dir, true)
	for _, p := range []string{"a/new", "a/f", "a/g"} {
		if _, ok := frozen[p]; !ok {
			t.Errorf("committed layer lacks %s: %v", p, frozen)
		}
	}
	if !strings.HasPrefix(frozen["a/g"], "whiteout") {
		t.Errorf("a/g in the committed layer: %s, want a whiteout", frozen["a/g"])
	}
	if d := diffMaps(ts.mergedDump(t, ""), view); d != "" {
		t.Errorf("merged view changed by the commit:\n%s", d)
	}
	if d := diffMaps(ts.inodes(t), inos); d != "" {
		t.Errorf("inode numbers or times changed by the commit:\n%s", d)
	}

	// Writing through an object found before the commit copies it up
	// again: the committed layer never changes.
	layerBefore := fingerprint(t, c.Dir)
	fd, _, err = ts.Open(held, "a/new", unix.O_WRONLY|unix.O_APPEND)
	if err != nil {
		t.Fatal(err)
	}
	unix.Write(fd, []byte("+more"))
	unix.Close(fd)
	if got := ts.read(t, "a/new"); got != "new+more" {
		t.Errorf("a/new = %q", got)
	}
	if fingerprint(t, c.Dir) != layerBefore {
		t.Error("a write after the commit changed the committed layer")
	}
	if _, err := os.Lstat(filepath.Join(ts.upper, "a/new")); err != nil {
		t.Errorf("a/new not copied up into the fresh upper: %v", err)
	}

	// A remount stacks the committed layer again; a second commit goes
	// on top of the first.
	view = ts.mergedDump(t, "")
	ts.open(t)
	if d := diffMaps(ts.mergedDump(t, ""), view); d != "" {
		t.Errorf("remount changed the merged view:\n%s", d)
	}
	ts.unlink(t, "a/new")
	c2, err := ts.Commit(nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{c.Dir, ts.lowers[0]}; strings.Join(c2.Lowers, ":") != strings.Join(want, ":") {
		t.Errorf("second commit: lowers %v, want %v", c2.Lowers, want)
	}
	ts.open(t)
	ts.absent(t, "a/new")
	ts.absent(t, "a/g")
	if got := ts.read(t, "a/f"); got != "UPPER f" {
		t.Errorf("a/f = %q", got)
	}
	if got, err := committedLayers(ts.work); err != nil || strings.Join(got, ":") != c2.Dir+":"+c.Dir {
		t.Errorf("committedLayers = %v, %v", got, err)
	}
}

func TestNormalize(t *testing.T) {
	requireRoot(t) // trusted.* xattrs and whiteout devices
	ts := newTestStack(t, []entry{
		file(".wh.gone", ""),                    // OCI-style whiteout of a lower file
		file(".wh.kept", ""), file("kept", "k"), // a real entry beats its marker
		dir("o"), file("o/.wh..wh..opq", ""), chardev("o/.wh..opq", 0), // fuse-overlayfs opaque
		whiteout("o/old"), file("o/.wh.older", ""), file("o/new", "n"), // redundant inside o
		opaqueX("u", "user.fuseoverlayfs.opaque"),
	}, []entry{file("gone", "g"), file("kept", "lower"), dir("o/old"), file("o/older", "x"), file("u/x", "x")})
	view := ts.mergedDump(t, "")
	n, err := ts.Normalize()
	if err != nil {
		t.Fatal(err)
	}
	if n != 6 {
		t.Errorf("Normalize rewrote %d markers, want 6", n)
	}
	got := dumpTree(t, ts.upper, true)
	for p, want := range map[string]string{
		"gone": "whiteout", "kept": `file "k"`, "o": "dir", "o/new": `file "n"`, "u": "dir",
	} {
		if !strings.HasPrefix(got[p], want) {
			t.Errorf("%s: %q, want %s...", p, got[p], want)
		}
	}
	for _, p := range []string{".wh.gone", ".wh.kept", "o/.wh..wh..opq", "o/.wh..opq", "o/old", "o/.wh.older"} {
		if _, ok := got[p]; ok {
			t.Errorf("%s left in the upper: %v", p, got)
		}
	}
	for _, d := range []string{"o", "u"} {
		if !strings.Contains(got[d], `trusted.overlay.opaque="y"`) || strings.Contains(got[d], "fuseoverlayfs") {
			t.Errorf("%s: %q, want trusted.overlay.opaque=y only", d, got[d])
		}
	}
	if d := diffMaps(ts.mergedDump(t, ""), view); d != "" {
		t.Errorf("Normalize changed the merged view:\n%s", d)
	}
}

func TestCommitKeepsHardLinks(t *testing.T) {
	requireRoot(t)
	ts := newTestStack(t, nil, []entry{file("d/a", "orig"), hardlink("d/b", "d/a"), hardlink("e/c", "d/a")})
	fd, _, err := ts.Open(ts.mustLookup(t, "d/a"), "d/a", unix.O_WRONLY|unix.O_APPEND)
	if err != nil {
		t.Fatal(err)
	}
	unix.Write(fd, []byte("+new"))
	unix.Close(fd)
	n, err := ts.MaterializeIndex()
	if err != nil || n != 2 {
		t.Fatalf("MaterializeIndex = %d, %v; want 2 names linked", n, err)
	}
	view, inos := ts.mergedDump(t, ""), ts.inodes(t)
	c, err := ts.Commit(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Unlinked) != 0 {
		t.Errorf("Unlinked = %v, want none: every name is in the layer", c.Unlinked)
	}
	var sa, sb, sc unix.Stat_t
	for p, st := range map[string]*unix.Stat_t{"d/a": &sa, "d/b": &sb, "e/c": &sc} {
		if err := unix.Lstat(filepath.Join(c.Dir, p), st); err != nil {
			t.Fatalf("committed layer lacks %s: %v", p, err)
		}
	}
	if sa.Ino != sb.Ino || sa.Ino != sc.Ino || sa.Nlink != 3 {
		t.Errorf("committed names are not one file: inodes %d %d %d, nlink %d", sa.Ino, sb.Ino, sc.Ino, sa.Nlink)
	}
	if d := diffMaps(ts.mergedDump(t, ""), view); d != "" {
		t.Errorf("merged view changed by the commit:\n%s", d)
	}
	if d := diffMaps(ts.inodes(t), inos); d != "" {
		t.Errorf("inode numbers changed by the commit:\n%s", d)
	}
}

func TestVolatileMarker(t *testing.T) {
	ts := newTestStack(t, nil, []entry{file("f", "x")})
	ts.Stack.Close()
	ts.cfg.Volatile = true
	s, err := Open(ts.cfg)
	if err != nil {
		t.Fatal(err)
	}
	marker := filepath.Join(ts.work, "volatile")
	if _, err := os.Lstat(marker); err != nil {
		t.Errorf("no marker while a volatile stack is open: %v", err)
	}
	// A crash: the stack is never closed. The next open is refused.
	_, err = Open(ts.cfg)
	wantErrno(t, err, unix.EUCLEAN)
	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if _, err := os.Lstat(marker); !os.IsNotExist(err) {
		t.Errorf("marker left after a clean close: %v", err)
	}
	s, err = Open(ts.cfg)
	if err != nil {
		t.Fatalf("open after a clean close: %v", err)
	}
	s.Close()
	// The kernel's marker is honoured too.
	kernel := filepath.Join(ts.work, "work", "incompat", "volatile")
	if err := os.MkdirAll(kernel, 0o700); err != nil {
		t.Fatal(err)
	}
	ts.cfg.Volatile = false
	_, err = Open(ts.cfg)
	wantErrno(t, err, unix.EUCLEAN)
	os.RemoveAll(filepath.Join(ts.work, "work", "incompat"))
	ts.open(t)
}

// TestCommitKeepsLiveFiles commits with a file named live (one written
// behind the stack's back, as through FUSE passthrough): the file stays in
// the upper as the same inode, the layer gets a copy as it was, and no
// directory's times move; a live file with two links fails the commit
// before anything changes.
func TestCommitKeepsLiveFiles(t *testing.T) {
	ts := newTestStack(t, nil, []entry{file("d/lower", "lower")})
	ts.create(t, "d/live", "before", Owner{})
	fd, _, err := ts.Open(ts.mustLookup(t, "d/live"), "d/live", unix.O_WRONLY)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	var before, dirBefore unix.Stat_t
	unix.Fstat(fd, &before)
	if err := unix.Lstat(filepath.Join(ts.upper, "d"), &dirBefore); err != nil {
		t.Fatal(err)
	}
	view := ts.mergedDump(t, "")
	c, err := ts.Commit(func() []string { return []string{"d/live"} })
	if err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if _, err := unix.Pwrite(fd, []byte("AFTER!"), 0); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(c.Dir, "d/live")); string(got) != "before" {
		t.Errorf("layer d/live = %q, want the data at the commit", got)
	}
	if got, _ := os.ReadFile(filepath.Join(ts.upper, "d/live")); string(got) != "AFTER!" {
		t.Errorf("upper d/live = %q, want what was written after the commit", got)
	}
	var now unix.Stat_t
	unix.Lstat(filepath.Join(ts.upper, "d/live"), &now)
	if now.Ino != before.Ino {
		t.Error("the live file in the upper is not the file that was open")
	}
	for _, d := range []string{filepath.Join(ts.upper, "d"), filepath.Join(c.Dir, "d")} {
		var st unix.Stat_t
		if err := unix.Lstat(d, &st); err != nil {
			t.Fatal(err)
		}
		if st.Mtim != dirBefore.Mtim {
			t.Errorf("%s mtime %v, want %v", d, st.Mtim, dirBefore.Mtim)
		}
	}
	got := ts.mergedDump(t, "")
	delete(got, "d/live")
	delete(view, "d/live")
	if d := diffMaps(got, view); d != "" {
		t.Errorf("merged view after the commit: %s", d)
	}

	if err := os.Link(filepath.Join(ts.upper, "d/live"), filepath.Join(ts.upper, "d/second")); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.Commit(func() []string { return []string{"d/live"} }); err == nil || !strings.Contains(err.Error(), "2 links") {
		t.Errorf("Commit of a live file with two links: %v, want an error", err)
	}
	if _, err := os.Stat(filepath.Join(ts.work, "layers", "2")); !os.IsNotExist(err) {
		t.Errorf("the refused commit left layers/2: %v", err)
	}
}

// TestCommitLiveFullDisk commits with a live file that does not fit twice
// on a full filesystem: the commit fails before it changes anything, and
// leaves no copy behind.
func TestCommitLiveFullDisk(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	if err := unix.Mount("tmpfs", root, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("mount a small tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(root, unix.MNT_DETACH) })
	ts := &testStack{upper: filepath.Join(root, "upper"), work: filepath.Join(root, "work")}
	lower := filepath.Join(t.TempDir(), "lower")
	for _, d := range []string{lower, ts.upper, ts.work} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ts.lowers = []string{lower}
	if err := os.WriteFile(filepath.Join(ts.upper, "live"), make([]byte, 600<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	ts.cfg = Config{Lowers: ts.lowers, Upper: ts.upper, Work: ts.work}
	ts.open(t)
	upper, work := dumpTree(t, ts.upper, true), dumpTree(t, ts.work, true)
	_, err := ts.Commit(func() []string { return []string{"live"} })
	wantErrno(t, err, unix.ENOSPC)
	if d := diffMaps(dumpTree(t, ts.upper, true), upper); d != "" {
		t.Errorf("the failed commit changed the upper: %s", d)
	}
	if d := diffMaps(dumpTree(t, ts.work, true), work); d != "" {
		t.Errorf("the failed commit left something in the work directory: %s", d)
	}
}
