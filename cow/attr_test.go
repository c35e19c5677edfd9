package cow

import (
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

func TestXattrsPrivate(t *testing.T) {
	requireRoot(t)
	ts := newTestStack(t, nil, []entry{opaque("d").withXattr("user.k", "v"), file("d/f", "x")})
	d := ts.mustLookup(t, "d")
	names, err := ts.Listxattr(d, "d")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(names, []string{"user.k"}) {
		t.Errorf("Listxattr: %v, want [user.k]", names)
	}
	_, err = ts.Getxattr(d, "d", "trusted.overlay.opaque")
	wantErrno(t, err, unix.ENODATA)
	// The other markers the union reads cannot be set at all.
	for _, x := range []string{"user.overlay.opaque", "user.fuseoverlayfs.opaque"} {
		_, err = ts.Setxattr(d, "d", x, []byte("y"), 0)
		wantErrno(t, err, unix.EPERM)
		_, err = ts.Removexattr(d, "d", x)
		wantErrno(t, err, unix.ENODATA)
	}
	if exists(filepath.Join(ts.upper, "d")) {
		t.Error("a refused xattr change copied d up")
	}
	// Its own namespace is escaped, as in the kernel: the merged view's
	// trusted.overlay.X is trusted.overlay.overlay.X on disk, and the
	// marker itself stays untouched.
	c, err := ts.Setxattr(d, "d", "trusted.overlay.opaque", []byte("n"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := ts.Getxattr(c, "d", "trusted.overlay.opaque"); err != nil || string(v) != "n" {
		t.Errorf("escaped trusted.overlay.opaque reads %q, %v; want n", v, err)
	}
	buf := make([]byte, 8)
	if n, err := unix.Lgetxattr(filepath.Join(ts.upper, "d"), "trusted.overlay.overlay.opaque", buf); err != nil || string(buf[:n]) != "n" {
		t.Errorf("on disk trusted.overlay.overlay.opaque = %q, %v; want n", buf[:n], err)
	}
	if n, err := unix.Lgetxattr(filepath.Join(ts.upper, "d"), "trusted.overlay.opaque", buf); err == nil && string(buf[:n]) == "n" {
		t.Error("setting the escaped name changed the real opaque marker")
	}
	f := ts.mustLookup(t, "d/f")
	c, err = ts.Setxattr(f, "d/f", "user.new", []byte("1"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Upper() {
		t.Error("Setxattr did not copy up")
	}
	v, err := ts.Getxattr(c, "d/f", "user.new")
	if err != nil || string(v) != "1" {
		t.Errorf("Getxattr: %q, %v", v, err)
	}
	_, err = ts.Getxattr(c, "d/f", "user.absent")
	wantErrno(t, err, unix.ENODATA)
}

func TestSetattrTruncateCopiesNoData(t *testing.T) {
	ts := newTestStack(t, nil, []entry{file("f", "some data").withMode(0o640)})
	o := ts.mustLookup(t, "f")
	zero := uint64(0)
	c, _, err := ts.Setattr(o, "f", Attr{Size: &zero, FromHandle: -1})
	if err != nil {
		t.Fatal(err)
	}
	st, err := ts.Stat(c, "f")
	if err != nil {
		t.Fatal(err)
	}
	if st.Size != 0 || st.Mode != unix.S_IFREG|0o640 || st.Ino != o.Ino || !c.Upper() {
		t.Errorf("size %d mode %o ino %d upper %v, want 0, 0640, %d, true", st.Size, st.Mode, st.Ino, c.Upper(), o.Ino)
	}
}

// Setattr makes each change and returns the attributes Stat gives after
// it, merged inode number and blocks included: for a lower file copied up
// by the change, a metadata-only copy, then the upper file, by name and
// through a descriptor open on it (FromHandle), and a symlink.
func TestSetattrReturnsTheNewAttributes(t *testing.T) {
	ts := newMetaStack(t, append(bigLower(), file("f", "some data").withMode(0o640), symlink("l", "f")))
	mode, mode2, size, size2 := uint32(0o600), uint32(0o604), uint64(4), uint64(2)
	at := unix.Timespec{Sec: 1700000000, Nsec: 5}
	at2 := unix.Timespec{Sec: 1600000000, Nsec: 7}
	for _, tc := range []struct {
		rel    string
		a      Attr
		handle bool // through a descriptor open for writing
	}{
		{"f", Attr{Mode: &mode}, false},
		{"f", Attr{Size: &size}, false},
		{"d/f", Attr{Mode: &mode}, false},
		{"f", Attr{Atime: &at, Mtime: &at}, false},
		{"f", Attr{Mode: &mode2, Size: &size2, Mtime: &at2}, true},
		{"l", Attr{Mtime: &at}, false},
	} {
		tc.a.FromHandle = -1
		o := ts.mustLookup(t, tc.rel)
		if tc.handle {
			fd, err := unix.Open(filepath.Join(ts.upper, tc.rel), unix.O_WRONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			tc.a.FromHandle = fd
		}
		c, got, err := ts.Setattr(o, tc.rel, tc.a)
		if err != nil {
			t.Fatalf("%s %+v: %v", tc.rel, tc.a, err)
		}
		want, err := ts.Stat(c, tc.rel)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("%s %+v: Setattr returned %+v, Stat gives %+v", tc.rel, tc.a, got, want)
		}
		if got.Ino != o.Ino {
			t.Errorf("%s: inode %d, want the merged %d", tc.rel, got.Ino, o.Ino)
		}
		if m := tc.a.Mode; m != nil && got.Mode&0o7777 != *m {
			t.Errorf("%s: mode %o, want %o", tc.rel, got.Mode&0o7777, *m)
		}
		if sz := tc.a.Size; sz != nil && got.Size != int64(*sz) {
			t.Errorf("%s: size %d, want %d", tc.rel, got.Size, *sz)
		}
		if mt := tc.a.Mtime; mt != nil && got.Mtim != *mt {
			t.Errorf("%s: mtime %v, want %v", tc.rel, got.Mtim, *mt)
		}
		if at := tc.a.Atime; at != nil && got.Atim != *at {
			t.Errorf("%s: atime %v, want %v", tc.rel, got.Atim, *at)
		}
	}
	if c := ts.mustLookup(t, "d/f"); !c.Metacopy() || !c.Upper() {
		t.Errorf("d/f: metacopy %v upper %v, want a metadata-only copy", c.Metacopy(), c.Upper())
	}
}

func TestTmpfileOverWhiteout(t *testing.T) {
	requireRoot(t)
	ts := newTestStack(t, []entry{whiteout("f")}, []entry{file("f", "old")})
	root := ts.mustLookup(t, "")
	fd, o, err := ts.Tmpfile(root, "", unix.O_RDWR, 0o600, Owner{})
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	unix.Write(fd, []byte("tmp"))
	if _, err := ts.LinkTmpfile(fd, o, root, "", "f"); err != nil {
		t.Fatal(err)
	}
	if got := ts.read(t, "f"); got != "tmp" {
		t.Errorf("f: %q, want %q", got, "tmp")
	}
	_, err = ts.LinkTmpfile(fd, o, root, "", "f")
	wantErrno(t, err, unix.EEXIST)
}

// TestXattrsOnRoot reads xattrs of the merged root, which is each layer's
// own root directory, and of an object below it.
func TestXattrsOnRoot(t *testing.T) {
	ts := newTestStack(t, []entry{file("f", "x").withXattr("user.f", "1")}, []entry{file("g", "y")})
	if err := unix.Setxattr(ts.upper, "user.root", []byte("r"), 0); err != nil {
		t.Skipf("no user xattrs here: %v", err)
	}
	root := ts.mustLookup(t, "")
	for _, c := range []struct{ rel, name, want string }{{"", "user.root", "r"}, {"f", "user.f", "1"}} {
		o := root
		if c.rel != "" {
			o = ts.mustLookup(t, c.rel)
		}
		v, err := ts.Getxattr(o, c.rel, c.name)
		if err != nil || string(v) != c.want {
			t.Errorf("getxattr %q %s: %q, %v; want %q", c.rel, c.name, v, err, c.want)
		}
		names, err := ts.Listxattr(o, c.rel)
		if err != nil || !slices.Contains(names, c.name) {
			t.Errorf("listxattr %q: %v, %v; want %s in it", c.rel, names, err, c.name)
		}
	}
}

// TestLookupStatMatchesStat checks that the attributes a lookup returns
// are those Stat gives for the object: merged and plain directories, upper
// and lower files, and a hard-linked lower file served from the link index.
func TestLookupStatMatchesStat(t *testing.T) {
	ts := newTestStack(t,
		[]entry{dir("m"), file("m/u", "upper"), dir("up")},
		[]entry{dir("m"), file("m/l", "lower"), dir("lo"), file("h1", "linked"), hardlink("h2", "h1")})
	h1 := ts.mustLookup(t, "h1")
	if _, err := ts.CopyUp(h1, "h1", true); err != nil {
		t.Fatal(err)
	}
	for _, rel := range []string{"m", "up", "lo", "m/u", "m/l", "h1", "h2"} {
		dirRel, name := split(rel)
		dir := ts.mustLookup(t, dirRel)
		o, got, err := ts.LookupStat(dir, dirRel, name)
		if err != nil {
			t.Fatalf("%s: %v", rel, err)
		}
		want, err := ts.Stat(o, rel)
		if err != nil {
			t.Fatal(err)
		}
		if got.Ino != want.Ino || got.Mode != want.Mode || got.Nlink != want.Nlink || got.Size != want.Size || got.Mtim != want.Mtim {
			t.Errorf("%s: lookup gives ino %d mode %o nlink %d size %d; Stat ino %d mode %o nlink %d size %d",
				rel, got.Ino, got.Mode, got.Nlink, got.Size, want.Ino, want.Mode, want.Nlink, want.Size)
		}
	}
}
