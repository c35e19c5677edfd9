package integration

import (
	"bytes"
	binenc "encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// This file checks one overlay semantic per test through a real mount, each
// one a trap that union filesystems are known to fall into (see the
// research notes, features.md §4): writes through a read-only fd's backing
// file, inode numbers, hard links, reserved names, private xattrs,
// read-only unions, sparse files, concurrent copy-up, read-only sources and
// special files.

// semStack makes nLowers lower directories, an upper and a mount point in
// a fresh temporary directory.
func semStack(t *testing.T, nLowers int) (lowers []string, upper, mnt string) {
	t.Helper()
	root := t.TempDir()
	for i := range nLowers {
		lowers = append(lowers, filepath.Join(root, fmt.Sprintf("lower%d", i)))
	}
	upper, mnt = filepath.Join(root, "upper"), filepath.Join(root, "merged")
	for _, d := range append([]string{upper, mnt}, lowers...) {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return lowers, upper, mnt
}

// semMount mounts lowers (leftmost on top) with upper on mnt.
func semMount(t *testing.T, lowers []string, upper, mnt string) {
	t.Helper()
	mountUnion(t, strings.Join(lowers, ":"), upper, mnt)
}

// semWrite creates the file p (and its parents) with data and mode.
func semWrite(t *testing.T, p, data string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // past the umask
		t.Fatal(err)
	}
}

// semRead returns the content of p, or the error text.
func semRead(p string) string {
	data, err := os.ReadFile(p)
	if err != nil {
		return "error: " + err.Error()
	}
	return string(data)
}

func semLstat(t *testing.T, p string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatalf("lstat: %v", &fs.PathError{Op: "lstat", Path: p, Err: err})
	}
	return st
}

// semCheckErrno checks that err is one of the errnos want.
func semCheckErrno(t *testing.T, what string, err error, want ...unix.Errno) {
	t.Helper()
	for _, w := range want {
		if errors.Is(err, w) {
			return
		}
	}
	t.Errorf("%s: got %v, want %v", what, err, want)
}

// semDirents reads dir with getdents64 and returns each entry's d_ino,
// without . and ..
func semDirents(t *testing.T, dir string) map[string]uint64 {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatalf("open %s: %v", dir, err)
	}
	defer unix.Close(fd)
	ents := map[string]uint64{}
	buf := make([]byte, 8192)
	for {
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			t.Fatalf("getdents %s: %v", dir, err)
		}
		if n <= 0 {
			return ents
		}
		for off := 0; off < n; {
			ino := binenc.LittleEndian.Uint64(buf[off:])
			reclen := int(binenc.LittleEndian.Uint16(buf[off+16:]))
			name := buf[off+19 : off+reclen]
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			if s := string(name); s != "." && s != ".." {
				ents[s] = ino
			}
			off += reclen
		}
	}
}

// TestLowerNeverWrittenThroughROFd opens a lower file read-only, keeps it
// open, and then writes through a read-write open. The write must copy the
// file up and land in the upper only (with FUSE passthrough, a backing fd
// cached per inode would send it to the lower), and the read-only fd and a
// read-only shared mapping opened before the copy-up must see it. As root
// the mount has passthrough on, as by default, for the upper's files.
func TestLowerNeverWrittenThroughROFd(t *testing.T) {
	lowers, upper, mnt := semStack(t, 1)
	const orig = "original content\n"
	semWrite(t, filepath.Join(lowers[0], "ro.txt"), orig, 0o644)
	mapData := strings.Repeat("m", 3*4096)
	semWrite(t, filepath.Join(lowers[0], "map.txt"), mapData, 0o644)
	before := map[string]map[string]string{lowers[0]: lowerState(t, lowers[0])}
	semMount(t, lowers, upper, mnt)

	ro, err := os.Open(filepath.Join(mnt, "ro.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	buf := make([]byte, 100)
	if n, err := ro.Read(buf); err != nil || string(buf[:n]) != orig {
		t.Fatalf("read-only fd reads %q, %v", buf[:n], err)
	}
	rw, err := os.OpenFile(filepath.Join(mnt, "ro.txt"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rw.Write([]byte("XX")); err != nil {
		t.Fatal(err)
	}
	const changed = "XXiginal content\n"
	if got := semRead(filepath.Join(lowers[0], "ro.txt")); got != orig {
		t.Errorf("lower ro.txt is %q after a write through the mount, want %q", got, orig)
	}
	if got := semRead(filepath.Join(upper, "ro.txt")); got != changed {
		t.Errorf("upper ro.txt is %q, want %q", got, changed)
	}
	if n, err := ro.ReadAt(buf, 0); string(buf[:n]) != changed {
		t.Errorf("read-only fd opened before the copy-up reads %q (%v), want %q", buf[:n], err, changed)
	}
	if err := rw.Close(); err != nil {
		t.Fatal(err)
	}
	if got := semRead(filepath.Join(mnt, "ro.txt")); got != changed {
		t.Errorf("merged ro.txt is %q, want %q", got, changed)
	}

	// A shared read-only mapping of the lower file follows the copy-up.
	mf, err := os.Open(filepath.Join(mnt, "map.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer mf.Close()
	mem, err := unix.Mmap(int(mf.Fd()), 0, len(mapData), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	if string(mem[0:3]) != "mmm" || string(mem[5000:5003]) != "mmm" {
		t.Fatalf("mapping shows %q...%q before the write", mem[0:3], mem[5000:5003])
	}
	wf, err := os.OpenFile(filepath.Join(mnt, "map.txt"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{0, 5000} {
		if _, err := wf.WriteAt([]byte("NEW"), off); err != nil {
			t.Fatal(err)
		}
	}
	if err := wf.Close(); err != nil {
		t.Fatal(err)
	}
	if string(mem[0:3]) != "NEW" || string(mem[5000:5003]) != "NEW" {
		t.Errorf("read-only shared mapping shows %q...%q after the write, want NEW...NEW", mem[0:3], mem[5000:5003])
	}
	if n, err := mf.ReadAt(buf[:3], 5000); string(buf[:n]) != "NEW" {
		t.Errorf("read-only fd of map.txt reads %q (%v) at 5000, want NEW", buf[:n], err)
	}
	want := "NEW" + mapData[3:5000] + "NEW" + mapData[5003:]
	if got := semRead(filepath.Join(upper, "map.txt")); got != want {
		t.Errorf("upper map.txt is wrong (%d bytes, want %d)", len(got), len(want))
	}
	checkLowersUnchanged(t, before)
}

// TestReadOnlyHandleFollowsCopyUpAcrossCommit checks that a read-only
// descriptor follows its file's data through a copy-up made by another
// descriptor also when a commit froze the copy before the next read, and
// through the copy-up again of a file a commit froze.
func TestReadOnlyHandleFollowsCopyUpAcrossCommit(t *testing.T) {
	lowers, upper, mnt := semStack(t, 1)
	semWrite(t, filepath.Join(lowers[0], "low"), "lower\n", 0o644)
	before := map[string]map[string]string{lowers[0]: lowerState(t, lowers[0])}
	semMount(t, lowers, upper, mnt)
	if err := os.WriteFile(filepath.Join(mnt, "up"), []byte("upper\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ro := map[string]*os.File{}
	buf := make([]byte, 64)
	for _, name := range []string{"low", "up"} {
		f, err := os.Open(filepath.Join(mnt, name))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.ReadAt(buf, 0); err != nil && err != io.EOF {
			t.Fatal(err)
		}
		ro[name] = f
	}
	rewrite := func(name, data string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(mnt, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	check := func(when, name, want string) {
		t.Helper()
		n, err := ro[name].ReadAt(buf, 0)
		if err != nil && err != io.EOF {
			t.Fatalf("%s: read %s: %v", when, name, err)
		}
		if string(buf[:n]) != want {
			t.Errorf("%s: the read-only descriptor of %s reads %q, want %q", when, name, buf[:n], want)
		}
	}
	rewrite("low", "copied up\n")
	commitMount(t, nil, mnt)
	check("copy-up, then commit", "low", "copied up\n")
	rewrite("up", "after the commit\n")
	check("commit, then copy-up again", "up", "after the commit\n")
	commitMount(t, nil, mnt)
	rewrite("low", "third\n")
	check("commit, then copy-up again", "low", "third\n")
	checkLowersUnchanged(t, before)
}

// mountTmpfs mounts a small tmpfs on a new directory and unmounts it in
// t.Cleanup (registered before the union's, so it runs after).
func mountTmpfs(t *testing.T, dir string) {
	t.Helper()
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
}

// semInodes walks the tree at root and returns each path's st_ino. It
// fails the test when two paths share one (the tree has no hard links) and
// when a directory entry's d_ino is not the entry's st_ino.
func semInodes(t *testing.T, root string) map[string]uint64 {
	t.Helper()
	inos := map[string]uint64{}
	owner := map[uint64]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		st := semLstat(t, p)
		inos[rel] = st.Ino
		if o, ok := owner[st.Ino]; ok {
			t.Errorf("%s and %s share st_ino %d", o, rel, st.Ino)
		}
		owner[st.Ino] = rel
		if d.IsDir() {
			for name, dino := range semDirents(t, p) {
				est := semLstat(t, filepath.Join(p, name))
				if dino != est.Ino {
					t.Errorf("%s: d_ino %d, st_ino %d", filepath.Join(rel, name), dino, est.Ino)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return inos
}

// TestInodeNumbersStable checks that st_ino of lower objects does not
// change on copy-up (data and metadata), on rename or on remount, that
// d_ino equals st_ino, and that objects from lowers on different
// filesystems (two tmpfs, whose inode numbers collide) never share one.
func TestInodeNumbersStable(t *testing.T) {
	needRoot(t)
	needFUSE(t)
	lowers, upper, mnt := semStack(t, 1)
	root := filepath.Dir(upper)
	lowers = append(lowers, filepath.Join(root, "tmpfs1"), filepath.Join(root, "tmpfs2"))
	mountTmpfs(t, lowers[1])
	mountTmpfs(t, lowers[2])

	l0, l1, l2 := lowers[0], lowers[1], lowers[2]
	semWrite(t, filepath.Join(l0, "a"), "a\n", 0o644)
	semWrite(t, filepath.Join(l0, "d", "x"), "x\n", 0o644)
	semWrite(t, filepath.Join(l0, "shared"), "top\n", 0o644)
	if err := os.Symlink("a", filepath.Join(l0, "s1")); err != nil {
		t.Fatal(err)
	}
	semWrite(t, filepath.Join(l1, "b"), "b\n", 0o644)
	semWrite(t, filepath.Join(l1, "d", "y"), "y\n", 0o644)
	semWrite(t, filepath.Join(l1, "d", "sub", "z"), "z\n", 0o644)
	semWrite(t, filepath.Join(l1, "shared"), "hidden\n", 0o644)
	if err := os.MkdirAll(filepath.Join(l1, "e"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("b", filepath.Join(l1, "s2")); err != nil {
		t.Fatal(err)
	}
	semWrite(t, filepath.Join(l2, "c"), "c\n", 0o644)
	semWrite(t, filepath.Join(l2, "d", "w"), "w\n", 0o644)
	semWrite(t, filepath.Join(l2, "e", "q"), "q\n", 0o644)
	semWrite(t, filepath.Join(l2, "f"), "f\n", 0o644)
	semWrite(t, filepath.Join(l2, "g"), "g\n", 0o644)

	semMount(t, lowers, upper, mnt)
	orig := semInodes(t, mnt)

	// Copy-ups of every kind, and a rename.
	for _, p := range []string{"a", "c", "e/q"} {
		if err := os.Chmod(filepath.Join(mnt, p), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(mnt, "d"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"b", "d/y", "d/sub/z"} {
		f, err := os.OpenFile(filepath.Join(mnt, p), os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt([]byte("W"), 0); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	if err := unix.Lchown(filepath.Join(mnt, "s2"), 1234, 1234); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(mnt, "f"), filepath.Join(mnt, "f2")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(mnt, "g"), filepath.Join(mnt, "d", "sub", "g")); err != nil {
		t.Fatal(err)
	}
	want := map[string]uint64{}
	for p, ino := range orig {
		switch p {
		case "f":
			want["f2"] = ino
		case "g":
			want["d/sub/g"] = ino
		default:
			want[p] = ino
		}
	}
	check := func(when string, got map[string]uint64, want map[string]uint64) {
		t.Helper()
		for p, w := range want {
			if g, ok := got[p]; !ok {
				t.Errorf("%s: %s is missing", when, p)
			} else if g != w {
				t.Errorf("%s: st_ino of %s is %d, was %d", when, p, g, w)
			}
		}
	}
	afterCopyUp := semInodes(t, mnt)
	check("after copy-up", afterCopyUp, want)
	if _, err := os.Lstat(filepath.Join(upper, "d", "sub", "z")); err != nil {
		t.Errorf("d/sub/z was not copied up: %v", err)
	}

	// New objects get numbers of their own, and all survive a remount.
	semWrite(t, filepath.Join(mnt, "new"), "new\n", 0o644)
	if err := os.Mkdir(filepath.Join(mnt, "d", "newdir"), 0o755); err != nil {
		t.Fatal(err)
	}
	want = semInodes(t, mnt)
	unmount(t, mnt)
	semMount(t, lowers, upper, mnt)
	check("after remount", semInodes(t, mnt), want)
}

// TestHardLinks checks link(2) on lower files, unlinking open files and
// lower files that are hard-linked already.
func TestHardLinks(t *testing.T) {
	lowers, upper, mnt := semStack(t, 1)
	l := lowers[0]
	semWrite(t, filepath.Join(l, "file"), "0123456789\n", 0o644)
	semWrite(t, filepath.Join(l, "open"), "still readable\n", 0o644)
	semWrite(t, filepath.Join(l, "h1"), "hard-linked in the lower\n", 0o644)
	if err := os.Link(filepath.Join(l, "h1"), filepath.Join(l, "h2")); err != nil {
		t.Fatal(err)
	}
	before := map[string]map[string]string{l: lowerState(t, l)}
	semMount(t, lowers, upper, mnt)

	t.Run("LinkLowerFile", func(t *testing.T) {
		a, b := filepath.Join(mnt, "file"), filepath.Join(mnt, "link")
		if err := os.Link(a, b); err != nil {
			t.Fatal(err)
		}
		sa, sb := semLstat(t, a), semLstat(t, b)
		if sa.Ino != sb.Ino || sa.Nlink != 2 || sb.Nlink != 2 {
			t.Errorf("after link: ino %d nlink %d and ino %d nlink %d, want one ino with nlink 2",
				sa.Ino, sa.Nlink, sb.Ino, sb.Nlink)
		}
		ua, ub := semLstat(t, filepath.Join(upper, "file")), semLstat(t, filepath.Join(upper, "link"))
		if ua.Ino != ub.Ino || ua.Nlink != 2 {
			t.Errorf("upper file (ino %d nlink %d) and link (ino %d) are not one file with 2 links",
				ua.Ino, ua.Nlink, ub.Ino)
		}
		f, err := os.OpenFile(b, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt([]byte("AB"), 3); err != nil {
			t.Fatal(err)
		}
		f.Close()
		if got := semRead(a); got != "012AB56789\n" {
			t.Errorf("file reads %q after a write through link, want %q", got, "012AB56789\n")
		}
	})

	t.Run("UnlinkOpenFile", func(t *testing.T) {
		// A lower file, open read-only, then unlinked.
		f, err := os.Open(filepath.Join(mnt, "open"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := os.Remove(filepath.Join(mnt, "open")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 100)
		if n, err := f.ReadAt(buf, 0); string(buf[:n]) != "still readable\n" {
			t.Errorf("unlinked lower file reads %q (%v) through its fd", buf[:n], err)
		}
		// An upper file, open read-write, then unlinked.
		p := filepath.Join(mnt, "created")
		g, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		defer g.Close()
		if _, err := g.WriteString("before unlink\n"); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
		if _, err := g.WriteString("after unlink\n"); err != nil {
			t.Errorf("write to an unlinked open file: %v", err)
		}
		if n, err := g.ReadAt(buf, 0); string(buf[:n]) != "before unlink\nafter unlink\n" {
			t.Errorf("unlinked upper file reads %q (%v) through its fd", buf[:n], err)
		}
		if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("unlinked file still visible: %v", err)
		}
	})

	t.Run("LowerHardLinks", func(t *testing.T) {
		h1, h2 := filepath.Join(mnt, "h1"), filepath.Join(mnt, "h2")
		const orig = "hard-linked in the lower\n"
		const want = "hard-LINKED in the lower\n"
		s1, s2 := semLstat(t, h1), semLstat(t, h2)
		if s1.Ino != s2.Ino || s1.Nlink != 2 || s2.Nlink != 2 {
			t.Errorf("before copy-up: h1 ino %d nlink %d, h2 ino %d nlink %d; want one ino, nlink 2",
				s1.Ino, s1.Nlink, s2.Ino, s2.Nlink)
		}
		f, err := os.OpenFile(h1, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt([]byte("LINKED"), 5); err != nil {
			t.Fatal(err)
		}
		f.Close()
		checkBoth := func(when string) {
			t.Helper()
			for _, p := range []string{h1, h2} {
				if got := semRead(p); got != want {
					t.Errorf("%s: %s reads %q, want %q", when, filepath.Base(p), got, want)
				}
			}
			s1, s2 := semLstat(t, h1), semLstat(t, h2)
			if s1.Ino != s2.Ino || s1.Nlink != 2 || s2.Nlink != 2 {
				t.Errorf("%s: h1 ino %d nlink %d, h2 ino %d nlink %d; want one ino, nlink 2",
					when, s1.Ino, s1.Nlink, s2.Ino, s2.Nlink)
			}
		}
		checkBoth("after a write through h1")
		if got := semRead(filepath.Join(l, "h2")); got != orig {
			t.Errorf("lower h2 changed to %q", got)
		}
		unmount(t, mnt)
		semMount(t, lowers, upper, mnt)
		checkBoth("after remount")
	})
	checkLowersUnchanged(t, before)
}

// TestWhiteoutNamesRejected checks that names a layer would read as
// whiteouts cannot be created through the mount, and that OCI-style
// ".wh." marker files in a lower hide the name below and are themselves
// invisible.
func TestWhiteoutNamesRejected(t *testing.T) {
	lowers, upper, mnt := semStack(t, 2)
	semWrite(t, filepath.Join(lowers[0], ".wh.gone"), "", 0o600)
	semWrite(t, filepath.Join(lowers[0], "opq", ".wh..wh..opq"), "", 0o600)
	semWrite(t, filepath.Join(lowers[0], "opq", "mine"), "mine\n", 0o644)
	semWrite(t, filepath.Join(lowers[1], "gone"), "gone\n", 0o644)
	semWrite(t, filepath.Join(lowers[1], "kept"), "kept\n", 0o644)
	semWrite(t, filepath.Join(lowers[1], "opq", "theirs"), "theirs\n", 0o644)
	semMount(t, lowers, upper, mnt)

	checkNames(t, mnt, []string{"kept", "opq"})
	checkNames(t, filepath.Join(mnt, "opq"), []string{"mine"})
	for _, p := range []string{"gone", ".wh.gone", "opq/theirs", "opq/.wh..wh..opq"} {
		_, err := os.Lstat(filepath.Join(mnt, p))
		semCheckErrno(t, "lstat "+p, err, unix.ENOENT)
	}

	m := func(name string) string { return filepath.Join(mnt, name) }
	_, err := os.OpenFile(m(".wh.new"), os.O_WRONLY|os.O_CREATE, 0o644)
	semCheckErrno(t, "create .wh.new", err, unix.EINVAL)
	semCheckErrno(t, "mkdir .wh.dir", os.Mkdir(m(".wh.dir"), 0o755), unix.EINVAL)
	semCheckErrno(t, "rename kept .wh.kept", os.Rename(m("kept"), m(".wh.kept")), unix.EINVAL)
	semCheckErrno(t, "symlink .wh.sym", os.Symlink("kept", m(".wh.sym")), unix.EINVAL)
	semCheckErrno(t, "link .wh.link", os.Link(m("kept"), m(".wh.link")), unix.EINVAL)
	semCheckErrno(t, "mkfifo .wh.fifo", unix.Mkfifo(m(".wh.fifo"), 0o644), unix.EINVAL)
	semCheckErrno(t, "mkdir opq/.wh..wh..opq", os.Mkdir(m("opq/.wh..wh..opq"), 0o755), unix.EINVAL)
	_, err = os.OpenFile(m(".wh.gone"), os.O_WRONLY|os.O_CREATE, 0o644)
	semCheckErrno(t, "create .wh.gone", err, unix.EINVAL)

	if got := semRead(m("kept")); got != "kept\n" {
		t.Errorf("kept reads %q", got)
	}
	checkNames(t, mnt, []string{"kept", "opq"})
	ents, err := os.ReadDir(upper)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		// A rejected name is an argument error: nothing may be copied up
		// before it is found.
		t.Errorf("upper has %s after operations rejected with EINVAL", e.Name())
	}

	// The hidden name can be created again; it sits above the marker.
	semWrite(t, m("gone"), "back\n", 0o644)
	if got := semRead(m("gone")); got != "back\n" {
		t.Errorf("recreated gone reads %q", got)
	}
	checkNames(t, mnt, []string{"gone", "kept", "opq"})
}

// semPrivate reports whether name is in a namespace the union keeps for
// itself.
func semPrivate(name string) bool {
	for _, p := range []string{"trusted.overlay.", "user.overlay."} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// TestPrivateXattrsHidden checks that the union's own xattrs (opaque
// markers, stored inode numbers) cannot be listed, read, set or removed
// through the mount.
func TestPrivateXattrsHidden(t *testing.T) {
	needRoot(t) // trusted.* xattrs
	lowers, upper, mnt := semStack(t, 1)
	semWrite(t, filepath.Join(lowers[0], "d", "f"), "f\n", 0o644)
	semWrite(t, filepath.Join(lowers[0], "file"), "file\n", 0o644)
	semMount(t, lowers, upper, mnt)

	// d becomes opaque (removed and made again), file is copied up.
	if err := os.Remove(filepath.Join(mnt, "d", "f")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(mnt, "d")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(mnt, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(mnt, "file"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lsetxattr(filepath.Join(mnt, "file"), "user.mine", []byte("1"), 0); err != nil {
		t.Fatal(err)
	}
	if v, _ := getXattr(filepath.Join(upper, "d"), "trusted.overlay.opaque"); v != "y" {
		t.Errorf("upper d has trusted.overlay.opaque=%q, want y", v)
	}

	for _, name := range []string{"d", "file"} {
		m, u := filepath.Join(mnt, name), filepath.Join(upper, name)
		upperNames, err := listXattr(u)
		if err != nil {
			t.Fatal(err)
		}
		upperVals := map[string]string{}
		var private []string
		for _, x := range upperNames {
			upperVals[x], _ = getXattr(u, x)
			if semPrivate(x) {
				private = append(private, x)
			}
		}
		t.Logf("upper %s has private xattrs %q", name, private)
		if name == "file" && len(private) == 0 {
			t.Errorf("upper file has no trusted.overlay.unionmount.ino; a copy-up must record its inode number")
		}
		names, err := listXattr(m)
		if err != nil {
			t.Errorf("listxattr %s: %v", name, err)
		}
		for _, x := range names {
			if semPrivate(x) {
				t.Errorf("listxattr %s shows %s", name, x)
			}
		}
		if name == "file" && !strings.Contains(fmt.Sprint(names), "user.mine") {
			t.Errorf("listxattr file is %q, want user.mine in it", names)
		}
		// As in the kernel, the merged view's trusted.overlay.X is an
		// ordinary xattr stored escaped (trusted.overlay.overlay.X):
		// it can be set and removed, but never reads or changes the
		// union's own markers.
		probe := append([]string{"trusted.overlay.opaque", "trusted.overlay.origin",
			"trusted.overlay.unionmount.ino"}, private...)
		for _, x := range probe {
			v, err := getXattr(m, x)
			if err == nil {
				t.Errorf("getxattr %s %s = %q, want an error", name, x, v)
			} else {
				semCheckErrno(t, "getxattr "+name+" "+x, err, unix.ENODATA, unix.EOPNOTSUPP)
			}
			if err := unix.Lsetxattr(m, x, []byte("n"), 0); err != nil {
				t.Errorf("setxattr %s %s: %v, want it stored escaped", name, x, err)
				continue
			}
			if v, err := getXattr(m, x); err != nil || v != "n" {
				t.Errorf("getxattr %s %s after setting it = %q, %v; want n", name, x, v, err)
			}
			if v, _ := getXattr(u, x); v != upperVals[x] {
				t.Errorf("setxattr %s %s through the mount changed the upper's own to %q", name, x, v)
			}
			if err := unix.Lremovexattr(m, x); err != nil {
				t.Errorf("removexattr %s %s: %v", name, x, err)
			}
		}
		// Markers of the other modes, which the union reads, cannot be
		// set at all.
		for _, x := range []string{"user.overlay.opaque", "user.fuseoverlayfs.opaque"} {
			if err := unix.Lsetxattr(m, x, []byte("y"), 0); err == nil {
				t.Errorf("setxattr %s %s succeeded", name, x)
			}
		}
		after, err := listXattr(u)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(after) != fmt.Sprint(upperNames) {
			t.Errorf("upper %s xattrs changed from %q to %q", name, upperNames, after)
		}
		for x, v := range upperVals {
			if got, _ := getXattr(u, x); got != v {
				t.Errorf("upper %s: %s changed from %q to %q", name, x, v, got)
			}
		}
	}
	checkNames(t, filepath.Join(mnt, "d"), nil)
}

// TestReadOnlyUnion checks unions without an upper and with --read-only:
// reads work, every change fails with EROFS and no layer changes.
func TestReadOnlyUnion(t *testing.T) {
	for _, tc := range []struct {
		name     string
		readOnly bool
	}{
		{"NoUpper", false},
		{"ReadOnlyFlag", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lowers, upper, mnt := semStack(t, 2)
			semWrite(t, filepath.Join(lowers[0], "a"), "one\n", 0o644)
			semWrite(t, filepath.Join(lowers[0], "d", "x"), "x\n", 0o644)
			semWrite(t, filepath.Join(lowers[1], "a"), "hidden\n", 0o644)
			semWrite(t, filepath.Join(lowers[1], "b"), "two\n", 0o644)
			semWrite(t, filepath.Join(lowers[1], "d", "y"), "y\n", 0o644)
			semWrite(t, filepath.Join(lowers[1], "e", "z"), "z\n", 0o644)
			semWrite(t, filepath.Join(upper, "c"), "three\n", 0o644)
			layers := append([]string{upper}, lowers...)
			before := map[string]map[string]string{}
			for _, l := range layers {
				before[l] = lowerState(t, l)
			}
			wantRoot := []string{"a", "b", "d", "e"}
			if tc.readOnly {
				mountUnion(t, "--read-only", strings.Join(lowers, ":"), upper, mnt)
				wantRoot = append(wantRoot, "c")
			} else {
				mountUnion(t, strings.Join(lowers, ":"), mnt)
			}

			m := func(name string) string { return filepath.Join(mnt, name) }
			checkNames(t, mnt, wantRoot)
			checkNames(t, m("d"), []string{"x", "y"})
			for p, want := range map[string]string{"a": "one\n", "b": "two\n", "d/x": "x\n", "d/y": "y\n"} {
				if got := semRead(m(p)); got != want {
					t.Errorf("%s reads %q, want %q", p, got, want)
				}
			}
			if tc.readOnly {
				if got := semRead(m("c")); got != "three\n" {
					t.Errorf("c reads %q", got)
				}
			}

			erofs := func(what string, err error) {
				t.Helper()
				semCheckErrno(t, what, err, unix.EROFS)
			}
			for _, flag := range []int{os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_APPEND, os.O_RDONLY | os.O_TRUNC} {
				f, err := os.OpenFile(m("a"), flag, 0)
				if err == nil {
					f.Close()
				}
				erofs(fmt.Sprintf("open a flags %#o", flag), err)
			}
			_, err := os.OpenFile(m("new"), os.O_WRONLY|os.O_CREATE, 0o644)
			erofs("create new", err)
			erofs("mkdir", os.Mkdir(m("newdir"), 0o755))
			erofs("unlink a", os.Remove(m("a")))
			erofs("unlink d/y", os.Remove(m("d/y")))
			erofs("rmdir e", unix.Rmdir(m("e")))
			erofs("rename a z", os.Rename(m("a"), m("z")))
			erofs("chmod a", os.Chmod(m("a"), 0o600))
			erofs("chmod d", os.Chmod(m("d"), 0o700))
			erofs("chown a", os.Lchown(m("a"), 1, 1))
			erofs("truncate a", os.Truncate(m("a"), 1))
			erofs("symlink", os.Symlink("a", m("sym")))
			erofs("link", os.Link(m("a"), m("link")))
			erofs("mkfifo", unix.Mkfifo(m("fifo"), 0o644))
			erofs("setxattr", unix.Lsetxattr(m("a"), "user.x", []byte("1"), 0))
			erofs("removexattr", unix.Lremovexattr(m("a"), "user.x"))
			erofs("utimes", os.Chtimes(m("b"), time.Unix(1e9, 0), time.Unix(1e9, 0)))
			if tc.readOnly {
				erofs("unlink c", os.Remove(m("c")))
				erofs("append c", func() error {
					f, err := os.OpenFile(m("c"), os.O_WRONLY|os.O_APPEND, 0)
					if err == nil {
						f.Close()
					}
					return err
				}())
			}
			checkNames(t, mnt, wantRoot)
			if got := semRead(m("a")); got != "one\n" {
				t.Errorf("a reads %q after the failed changes", got)
			}
			checkLowersUnchanged(t, before)
		})
	}
}

// TestSparseCopyUp checks that copying up a sparse file keeps it sparse
// and its content whole.
func TestSparseCopyUp(t *testing.T) {
	lowers, upper, mnt := semStack(t, 1)
	lp := filepath.Join(lowers[0], "sparse")
	const size = 64 << 20
	f, err := os.Create(lp)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for i, off := range []int64{0, 10<<20 + 8192, 33 << 20, size - 4096} {
		block := bytes.Repeat([]byte{byte('A' + i)}, 4096)
		if _, err := f.WriteAt(block, off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	lst := semLstat(t, lp)
	if lst.Blocks*512 > 1<<20 {
		t.Skipf("the lower filesystem does not keep files sparse (%d blocks)", lst.Blocks)
	}
	want, err := hashFile(lp)
	if err != nil {
		t.Fatal(err)
	}
	semMount(t, lowers, upper, mnt)

	// The first write copies the data up (a chmod would copy only the
	// metadata: see TestMetacopy); it writes back the byte that is there.
	w, err := os.OpenFile(filepath.Join(mnt, "sparse"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	rewriteFirstByte(t, w)
	w.Close()
	ust := semLstat(t, filepath.Join(upper, "sparse"))
	if ust.Size != size {
		t.Errorf("upper size %d, want %d", ust.Size, size)
	}
	if ust.Blocks*512 > 1<<20 {
		t.Errorf("upper copy has %d blocks (%d KiB) allocated; the lower has %d: the holes were filled",
			ust.Blocks, ust.Blocks/2, lst.Blocks)
	}
	for _, p := range []string{filepath.Join(mnt, "sparse"), filepath.Join(upper, "sparse")} {
		if got, err := hashFile(p); err != nil || got != want {
			t.Errorf("%s: content differs from the lower (%v)", p, err)
		}
	}
	if mst := semLstat(t, filepath.Join(mnt, "sparse")); mst.Blocks != ust.Blocks {
		t.Errorf("merged st_blocks %d, upper %d", mst.Blocks, ust.Blocks)
	}
}

// TestConcurrentCopyUp opens one lower file for append from 8 goroutines
// at once; each writes a line. The copy-up must happen once: the file
// ends with the original content and all 8 lines.
func TestConcurrentCopyUp(t *testing.T) {
	lowers, upper, mnt := semStack(t, 1)
	orig := strings.Repeat("original line\n", 50000)
	const files, writers = 6, 8
	for i := range files {
		semWrite(t, filepath.Join(lowers[0], fmt.Sprintf("log%d", i)), orig, 0o644)
	}
	semMount(t, lowers, upper, mnt)

	for i := range files {
		p := filepath.Join(mnt, fmt.Sprintf("log%d", i))
		start := make(chan struct{})
		var wg sync.WaitGroup
		errs := make(chan error, writers)
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
				if err != nil {
					errs <- err
					return
				}
				if _, err := fmt.Fprintf(f, "writer %d\n", w); err != nil {
					errs <- err
				}
				if err := f.Close(); err != nil {
					errs <- err
				}
			}()
		}
		close(start)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("log%d: %v", i, err)
		}
		for _, q := range []string{p, filepath.Join(upper, filepath.Base(p))} {
			got := semRead(q)
			rest, ok := strings.CutPrefix(got, orig)
			if !ok {
				t.Errorf("%s: lost the original content (%d bytes, want %d + lines)", q, len(got), len(orig))
				continue
			}
			lines := strings.Split(strings.TrimSuffix(rest, "\n"), "\n")
			sort.Strings(lines)
			var want []string
			for w := range writers {
				want = append(want, fmt.Sprintf("writer %d", w))
			}
			if fmt.Sprint(lines) != fmt.Sprint(want) {
				t.Errorf("%s: appended lines %q, want %q", q, lines, want)
			}
		}
	}
	if l := workLeftovers(t, filepath.Join(filepath.Dir(upper), ".upper.work")); len(l) > 0 {
		t.Errorf("work directory holds %v", l)
	}
}

// TestReadOnlySourceCopyUp checks copy-up of 0444 files (and a 0555
// directory) owned by another user: root can change, append to and remove
// them, and a copy-up without a data change keeps mode, owner and mtime.
func TestReadOnlySourceCopyUp(t *testing.T) {
	needRoot(t)
	lowers, upper, mnt := semStack(t, 1)
	l := lowers[0]
	const data = "read-only data\n"
	mtime := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	for _, p := range []string{"a", "b", "c", "d", "rodir/e"} {
		semWrite(t, filepath.Join(l, p), data, 0o444)
	}
	for _, p := range []string{"a", "b", "c", "d", "rodir/e", "rodir"} {
		lp := filepath.Join(l, p)
		if p == "rodir" {
			if err := os.Chmod(lp, 0o555); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Lchown(lp, 1234, 5678); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(lp, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	before := map[string]map[string]string{l: lowerState(t, l)}
	semMount(t, lowers, upper, mnt)

	checkAttrs := func(p string, mode uint32, content string, keepMtime bool) {
		t.Helper()
		for _, q := range []string{filepath.Join(mnt, p), filepath.Join(upper, p)} {
			st := semLstat(t, q)
			if st.Mode&0o7777 != mode || st.Uid != 1234 || st.Gid != 5678 {
				t.Errorf("%s: mode %o owner %d:%d, want %o 1234:5678", q, st.Mode&0o7777, st.Uid, st.Gid, mode)
			}
			if keepMtime && st.Mtim.Sec != mtime.Unix() {
				t.Errorf("%s: mtime %v, want %v", q, time.Unix(st.Mtim.Sec, 0).UTC(), mtime)
			}
			if content != "" {
				if got := semRead(q); got != content {
					t.Errorf("%s reads %q, want %q", q, got, content)
				}
			}
		}
	}

	if err := unix.Lsetxattr(filepath.Join(mnt, "a"), "user.x", []byte("1"), 0); err != nil {
		t.Fatal(err)
	}
	checkAttrs("a", 0o444, data, true)
	if v, err := getXattr(filepath.Join(upper, "a"), "user.x"); v != "1" {
		t.Errorf("upper a: user.x = %q, %v", v, err)
	}

	if err := os.Chmod(filepath.Join(mnt, "b"), 0o640); err != nil {
		t.Fatal(err)
	}
	checkAttrs("b", 0o640, data, true)

	for _, p := range []string{"c", "rodir/e"} {
		f, err := os.OpenFile(filepath.Join(mnt, p), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString("more\n"); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		checkAttrs(p, 0o444, data+"more\n", false)
	}
	// Copying e up added an entry to the upper rodir, but the merged
	// rodir did not change: its mtime must stay (the kernel restores the
	// parent's times after a copy-up), also once a remount drops caches.
	checkAttrs("rodir", 0o555, "", true)
	unmount(t, mnt)
	semMount(t, lowers, upper, mnt)
	checkAttrs("rodir", 0o555, "", true)
	checkAttrs("a", 0o444, data, true)

	if err := os.Remove(filepath.Join(mnt, "d")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(mnt, "d")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("d after remove: %v", err)
	}
	if st := semLstat(t, filepath.Join(upper, "d")); st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Errorf("upper d is mode %o rdev %d, want a 0/0 whiteout", st.Mode, st.Rdev)
	}
	checkLowersUnchanged(t, before)
}

// TestSpecialFilesCopyUp checks that metadata changes copy FIFOs, devices,
// sockets and symlinks up as what they are.
func TestSpecialFilesCopyUp(t *testing.T) {
	needRoot(t) // mknod of a device
	lowers, upper, mnt := semStack(t, 1)
	l := lowers[0]
	if err := unix.Mkfifo(filepath.Join(l, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	null := unix.Mkdev(1, 3)
	if err := unix.Mknod(filepath.Join(l, "null"), unix.S_IFCHR|0o644, int(null)); err != nil {
		t.Fatal(err)
	}
	sock, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(sock, &unix.SockaddrUnix{Name: filepath.Join(l, "sock")}); err != nil {
		t.Fatal(err)
	}
	unix.Close(sock)
	if err := unix.Chmod(filepath.Join(l, "sock"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("some/target", filepath.Join(l, "link")); err != nil {
		t.Fatal(err)
	}
	before := map[string]map[string]string{l: lowerState(t, l)}
	semMount(t, lowers, upper, mnt)

	for _, tc := range []struct {
		name string
		typ  uint32
		rdev uint64
	}{
		{"fifo", unix.S_IFIFO, 0},
		{"null", unix.S_IFCHR, null},
		{"sock", unix.S_IFSOCK, 0},
	} {
		m := filepath.Join(mnt, tc.name)
		if st := semLstat(t, m); st.Mode&unix.S_IFMT != tc.typ {
			t.Errorf("%s is mode %o through the mount before chmod", tc.name, st.Mode)
		}
		if err := unix.Chmod(m, 0o600); err != nil {
			t.Errorf("chmod %s: %v", tc.name, err)
			continue
		}
		for _, p := range []string{m, filepath.Join(upper, tc.name)} {
			st := semLstat(t, p)
			if st.Mode&unix.S_IFMT != tc.typ || st.Mode&0o7777 != 0o600 || st.Rdev != tc.rdev {
				t.Errorf("%s: mode %o rdev %d:%d, want %o|0600 rdev %d:%d", p, st.Mode,
					unix.Major(st.Rdev), unix.Minor(st.Rdev), tc.typ, unix.Major(tc.rdev), unix.Minor(tc.rdev))
			}
		}
	}

	m := filepath.Join(mnt, "link")
	if err := unix.Lchown(m, 1234, 4321); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{m, filepath.Join(upper, "link")} {
		st := semLstat(t, p)
		if st.Mode&unix.S_IFMT != unix.S_IFLNK || st.Uid != 1234 || st.Gid != 4321 {
			t.Errorf("%s: mode %o owner %d:%d, want a symlink owned by 1234:4321", p, st.Mode, st.Uid, st.Gid)
		}
		if target, err := os.Readlink(p); err != nil || target != "some/target" {
			t.Errorf("%s -> %q (%v), want some/target", p, target, err)
		}
	}
	checkLowersUnchanged(t, before)
}

// TestXattrsOfLowerObjectsFollowChanges asks lower objects, with and
// without xattrs, for absent and present xattrs (the daemon remembers a
// lower object that has none), then changes them through the mount: every
// later answer shows the change.
func TestXattrsOfLowerObjectsFollowChanges(t *testing.T) {
	lowers, upper, mnt := semStack(t, 1)
	semWrite(t, filepath.Join(lowers[0], "bare"), "bare\n", 0o644)
	semWrite(t, filepath.Join(lowers[0], "d", "f"), "f\n", 0o644)
	semWrite(t, filepath.Join(lowers[0], "with"), "with\n", 0o644)
	if err := unix.Setxattr(filepath.Join(lowers[0], "with"), "user.k", []byte("v"), 0); err != nil {
		t.Skipf("no user xattrs here: %v", err)
	}
	semMount(t, lowers, upper, mnt)
	get := func(rel, name string) string {
		buf := make([]byte, 64)
		n, err := unix.Lgetxattr(filepath.Join(mnt, rel), name, buf)
		if err != nil {
			return err.Error()
		}
		return string(buf[:n])
	}
	nodata := unix.ENODATA.Error()
	for range 2 {
		for _, c := range [][3]string{
			{"bare", "security.selinux", nodata}, {"bare", "user.k", nodata},
			{"d", "user.k", nodata}, {"with", "user.k", "v"}, {"with", "user.x", nodata},
		} {
			if got := get(c[0], c[1]); got != c[2] {
				t.Errorf("%s %s: %q, want %q", c[0], c[1], got, c[2])
			}
		}
	}
	for _, rel := range []string{"bare", "d", "with"} {
		if err := unix.Lsetxattr(filepath.Join(mnt, rel), "user.new", []byte(rel), 0); err != nil {
			t.Fatal(err)
		}
		if got := get(rel, "user.new"); got != rel {
			t.Errorf("%s user.new after setting it: %q", rel, got)
		}
	}
	if err := os.Rename(filepath.Join(mnt, "bare"), filepath.Join(mnt, "moved")); err != nil {
		t.Fatal(err)
	}
	if got := get("moved", "user.new"); got != "bare" {
		t.Errorf("moved user.new: %q", got)
	}
}

// TestLowerHandleOpenedAtFirstUse checks that a read-only open of a lower
// file costs the daemon no descriptor until the handle is first used,
// and that such a handle behaves as one opened at once: fstat through it
// matches stat of the name; it reads what a copy-up wrote after the open,
// the file as it was after its name was removed or renamed, and the file
// after a commit. With -o timeout=0 (lowers that may change) the daemon
// opens at once.
func TestLowerHandleOpenedAtFirstUse(t *testing.T) {
	lowers, upper, mnt := semStack(t, 1)
	l := lowers[0]
	names := []string{"a", "b", "c", "d", "e"}
	for _, n := range names {
		semWrite(t, filepath.Join(l, n), "lower "+n+"\n", 0o644)
	}
	before := map[string]map[string]string{l: lowerState(t, l)}
	semMount(t, lowers, upper, mnt)
	held := lowerFdsHeld(t, mnt, l)
	files := map[string]*os.File{}
	for _, n := range names {
		f, err := os.Open(filepath.Join(mnt, n))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		files[n] = f
	}
	if n := held(); n != 0 {
		t.Errorf("the daemon holds %d descriptors of lower files opened but not yet read, want 0", n)
	}

	var fst, st unix.Stat_t
	if err := unix.Fstat(int(files["a"].Fd()), &fst); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(filepath.Join(mnt, "a"), &st); err != nil {
		t.Fatal(err)
	}
	if fst.Ino != st.Ino || fst.Size != st.Size || fst.Mode != st.Mode || fst.Nlink != st.Nlink {
		t.Errorf("fstat of a not yet read: ino %d size %d mode %o nlink %d; stat of its name: ino %d size %d mode %o nlink %d",
			fst.Ino, fst.Size, fst.Mode, fst.Nlink, st.Ino, st.Size, st.Mode, st.Nlink)
	}
	readAll := func(n string) string {
		t.Helper()
		buf := make([]byte, 64)
		k, err := files[n].ReadAt(buf, 0)
		if err != nil && err != io.EOF {
			return "error: " + err.Error()
		}
		return string(buf[:k])
	}
	if got := readAll("a"); got != "lower a\n" {
		t.Errorf("a reads %q, want %q", got, "lower a\n")
	}
	if n := held(); n != 1 {
		t.Errorf("after the first read of a, the daemon holds %d descriptors of lower files, want 1", n)
	}

	if err := os.WriteFile(filepath.Join(mnt, "b"), []byte("upper b\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(mnt, "c")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(mnt, "d"), filepath.Join(mnt, "d2")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fstat(int(files["c"].Fd()), &fst); err != nil || fst.Size != int64(len("lower c\n")) {
		t.Errorf("fstat of c after its name was removed: size %d, %v; want size %d", fst.Size, err, len("lower c\n"))
	}
	commitMount(t, nil, mnt)
	for n, want := range map[string]string{"b": "upper b\n", "c": "lower c\n", "d": "lower d\n", "e": "lower e\n"} {
		if got := readAll(n); got != want {
			t.Errorf("%s, opened read-only before the changes, reads %q, want %q", n, got, want)
		}
	}
	checkLowersUnchanged(t, before)

	// With timeout=0 a layer may change behind the mount: open at once.
	lowers2, upper2, mnt2 := semStack(t, 1)
	semWrite(t, filepath.Join(lowers2[0], "f"), "f\n", 0o644)
	mountUnion(t, "-o", "timeout=0", lowers2[0], upper2, mnt2)
	held2 := lowerFdsHeld(t, mnt2, lowers2[0])
	f, err := os.Open(filepath.Join(mnt2, "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if n := held2(); n != 1 {
		t.Errorf("with timeout=0, the daemon holds %d descriptors of a lower file just opened, want 1", n)
	}
}

// lowerFdsHeld returns a function that counts the descriptors the daemon
// serving mnt has open on files in the directory lower.
func lowerFdsHeld(t *testing.T, mnt, lower string) func() int {
	t.Helper()
	pids := daemons(t, binary, mnt)
	if len(pids) != 1 {
		t.Fatalf("%d daemons serve %s, want 1", len(pids), mnt)
	}
	dir := filepath.Join("/proc", strconv.Itoa(pids[0]), "fd")
	return func() int {
		t.Helper()
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, e := range entries {
			if target, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && strings.HasPrefix(target, lower+"/") {
				n++
			}
		}
		return n
	}
}

// rewriteFirstByte writes back the first byte of f, open for reading and
// writing: a write that copies the file up without changing its data.
func rewriteFirstByte(t *testing.T, f *os.File) {
	t.Helper()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(b, 0); err != nil {
		t.Fatal(err)
	}
}
