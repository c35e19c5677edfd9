package cow

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// bigSize is the size of the lower files the metacopy tests change: well
// above MetacopyMin.
const bigSize = 1 << 20

// newMetaStack is newTestStack with metadata-only copy-up on, in the xattr
// namespace the test's user can write.
func newMetaStack(t *testing.T, lowers ...[]entry) *testStack {
	t.Helper()
	ts := buildLayers(t, nil, lowers)
	ts.cfg = Config{Lowers: ts.lowers, Upper: ts.upper, Work: ts.work, Metacopy: true, UserXattr: os.Geteuid() != 0}
	ts.open(t)
	return ts
}

// bigLower is a lower layer with the big file d/f (with a user xattr) and a
// small one d/small.
func bigLower() []entry {
	return []entry{
		file("d/f", string(pattern(bigSize))).withXattr("user.tag", "lower"),
		file("d/small", "small"),
		dir("e"),
	}
}

// assertMetacopy checks that the upper file rel is a metadata-only copy:
// sparse, with the lower's size, the metacopy xattr with an empty value and,
// when origin is not rel, a redirect to origin.
func assertMetacopy(t *testing.T, ts *testStack, rel, origin string) {
	t.Helper()
	p := filepath.Join(ts.upper, rel)
	st := lstat(t, p)
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size != bigSize || !mayBeMetacopy(&st) || hasData(t, p) {
		t.Errorf("%s: mode %o size %d blocks %d, want a regular file of %d bytes with no data blocks", rel, st.Mode, st.Size, st.Blocks, bigSize)
	}
	v, err := getxattrPath(p, ts.metacopyXattr())
	if err != nil || len(v) != 0 {
		t.Errorf("%s: metacopy xattr %q, %v; want an empty value", rel, v, err)
	}
	r, err := getxattrPath(p, ts.redirectXattr())
	switch {
	case origin == rel && err == nil:
		t.Errorf("%s: redirect %q, want none", rel, r)
	case origin != rel && string(r) != "/"+origin:
		t.Errorf("%s: redirect %q (%v), want %q", rel, r, err, "/"+origin)
	}
	if _, err := getxattrPath(p, ts.inoXattr()); err != nil {
		t.Errorf("%s: no ino xattr: %v", rel, err)
	}
}

// assertFull checks that the upper file rel holds its data itself.
// openCopiesData opens the metadata-only copy rel for writing with flags
// and checks that this copied its data up: a full copy holding the lower's
// data.
func openCopiesData(t *testing.T, ts *testStack, rel string, flags int) {
	t.Helper()
	fd, _, err := ts.Open(ts.mustLookup(t, rel), rel, flags)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	assertFull(t, ts, rel)
	if got := ts.read(t, rel); got != string(pattern(bigSize)) {
		t.Errorf("%s: data copied up differs from the lower's", rel)
	}
}

func assertFull(t *testing.T, ts *testStack, rel string) {
	t.Helper()
	p := filepath.Join(ts.upper, rel)
	if !hasData(t, p) {
		t.Errorf("%s: no data blocks: still a placeholder", rel)
	}
	for _, x := range []string{ts.metacopyXattr(), ts.redirectXattr()} {
		if v, err := getxattrPath(p, x); err == nil {
			t.Errorf("%s: %s = %q left on a full copy", rel, x, v)
		}
	}
}

func TestMetacopyChangesOfMetadata(t *testing.T) {
	mode := uint32(0o600)
	uid, gid := uint32(1234), uint32(5678)
	at := unix.Timespec{Sec: 1500000000, Nsec: 5}
	for _, tc := range []struct {
		name  string
		root  bool
		do    func(ts *testStack, o *Object) (*Object, error)
		check func(t *testing.T, st *unix.Stat_t, xattrs []string)
	}{
		{"chmod", false, func(ts *testStack, o *Object) (*Object, error) {
			c, _, err := ts.Setattr(o, "d/f", Attr{Mode: &mode, FromHandle: -1})
			return c, err
		}, func(t *testing.T, st *unix.Stat_t, _ []string) {
			if st.Mode&0o7777 != mode {
				t.Errorf("mode %o, want %o", st.Mode&0o7777, mode)
			}
		}},
		{"chown", true, func(ts *testStack, o *Object) (*Object, error) {
			c, _, err := ts.Setattr(o, "d/f", Attr{UID: &uid, GID: &gid, FromHandle: -1})
			return c, err
		}, func(t *testing.T, st *unix.Stat_t, _ []string) {
			if st.Uid != uid || st.Gid != gid {
				t.Errorf("owner %d:%d, want %d:%d", st.Uid, st.Gid, uid, gid)
			}
		}},
		{"utimes", false, func(ts *testStack, o *Object) (*Object, error) {
			c, _, err := ts.Setattr(o, "d/f", Attr{Atime: &at, Mtime: &at, FromHandle: -1})
			return c, err
		}, func(t *testing.T, st *unix.Stat_t, _ []string) {
			if st.Mtim != at || st.Atim != at {
				t.Errorf("times %v %v, want %v", st.Atim, st.Mtim, at)
			}
		}},
		{"setxattr", false, func(ts *testStack, o *Object) (*Object, error) {
			return ts.Setxattr(o, "d/f", "user.new", []byte("v"), 0)
		}, func(t *testing.T, _ *unix.Stat_t, xattrs []string) {
			if !slices.Contains(xattrs, "user.new") || !slices.Contains(xattrs, "user.tag") {
				t.Errorf("xattrs %v, want user.new and user.tag", xattrs)
			}
		}},
		{"removexattr", false, func(ts *testStack, o *Object) (*Object, error) {
			return ts.Removexattr(o, "d/f", "user.tag")
		}, func(t *testing.T, _ *unix.Stat_t, xattrs []string) {
			if slices.Contains(xattrs, "user.tag") {
				t.Errorf("xattrs %v, user.tag not removed", xattrs)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.root {
				requireRoot(t)
			}
			ts := newMetaStack(t, bigLower())
			o := ts.mustLookup(t, "d/f")
			c, err := tc.do(ts, o)
			if err != nil {
				t.Fatal(err)
			}
			if !c.Upper() || !c.Metacopy() || c.DataUpper() || c.Ino != o.Ino {
				t.Errorf("object: upper %v metacopy %v, ino %d; want a metadata-only copy with ino %d", c.Upper(), c.Metacopy(), c.Ino, o.Ino)
			}
			assertMetacopy(t, ts, "d/f", "d/f")
			for _, remount := range []bool{false, true} {
				if remount {
					ts.open(t)
				}
				o := ts.mustLookup(t, "d/f")
				if !o.Metacopy() {
					t.Fatalf("remount %v: lookup does not see a metadata-only copy", remount)
				}
				if got := ts.read(t, "d/f"); got != string(pattern(bigSize)) {
					t.Errorf("remount %v: read %d bytes, not the lower's data", remount, len(got))
				}
				st, err := ts.Stat(o, "d/f")
				if err != nil {
					t.Fatal(err)
				}
				lst := lstat(t, filepath.Join(ts.lowers[0], "d/f"))
				if st.Size != bigSize || st.Blocks != lst.Blocks || st.Ino != o.Ino {
					t.Errorf("stat: size %d blocks %d ino %d, want %d, the data's %d, %d", st.Size, st.Blocks, st.Ino, bigSize, lst.Blocks, o.Ino)
				}
				xs, err := ts.Listxattr(o, "d/f")
				if err != nil {
					t.Fatal(err)
				}
				for _, x := range xs {
					if strings.Contains(x, "overlay.") {
						t.Errorf("listxattr shows the union's %s", x)
					}
				}
				for _, x := range []string{ts.metacopyXattr(), ts.redirectXattr()} {
					if _, err := ts.Getxattr(o, "d/f", x); !errors.Is(err, unix.ENODATA) {
						t.Errorf("getxattr %s: %v, want ENODATA", x, err)
					}
				}
				tc.check(t, &st, xs)
			}
			// Which names both layers.
			src, err := ts.Which("d/f")
			if err != nil || !src.Metacopy || src.Layer != ts.upper || src.Data != ts.lowers[0] || src.DataPath != "d/f" {
				t.Errorf("which: %+v, %v", src, err)
			}
		})
	}
}

func TestMetacopyOnlyWhenAllowed(t *testing.T) {
	mode := uint32(0o600)
	ts := newMetaStack(t, bigLower())
	if _, _, err := ts.Setattr(ts.mustLookup(t, "d/small"), "d/small", Attr{Mode: &mode, FromHandle: -1}); err != nil {
		t.Fatal(err)
	}
	if _, err := getxattrPath(filepath.Join(ts.upper, "d/small"), ts.metacopyXattr()); err == nil {
		t.Errorf("a file below MetacopyMin was copied up without its data")
	}
	if got := ts.read(t, "d/small"); got != "small" {
		t.Errorf("read %q", got)
	}

	ts.cfg.Metacopy = false
	ts.open(t)
	if _, _, err := ts.Setattr(ts.mustLookup(t, "d/f"), "d/f", Attr{Mode: &mode, FromHandle: -1}); err != nil {
		t.Fatal(err)
	}
	assertFull(t, ts, "d/f")
	if got := ts.read(t, "d/f"); got != string(pattern(bigSize)) {
		t.Errorf("read after a full copy-up: not the lower's data")
	}
}

// chmodMeta makes d/f of ts a metadata-only copy.
func chmodMeta(t *testing.T, ts *testStack, rel string) *Object {
	t.Helper()
	mode := uint32(0o640)
	c, _, err := ts.Setattr(ts.mustLookup(t, rel), rel, Attr{Mode: &mode, FromHandle: -1})
	if err != nil {
		t.Fatal(err)
	}
	if !c.Metacopy() {
		t.Fatalf("%s: no metadata-only copy", rel)
	}
	return c
}

func TestMetacopyFirstChangeOfData(t *testing.T) {
	want := pattern(bigSize)
	for _, tc := range []struct {
		name string
		do   func(t *testing.T, ts *testStack, o *Object) *Object
		want []byte
	}{
		{"write", func(t *testing.T, ts *testStack, o *Object) *Object {
			fd, c, err := ts.Open(o, "d/f", unix.O_WRONLY)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			if _, err := unix.Pwrite(fd, []byte("NEW"), 100); err != nil {
				t.Fatal(err)
			}
			return c
		}, append(append(slices.Clone(want[:100]), "NEW"...), want[103:]...)},
		{"O_TRUNC", func(t *testing.T, ts *testStack, o *Object) *Object {
			fd, c, err := ts.Open(o, "d/f", unix.O_WRONLY|unix.O_TRUNC)
			if err != nil {
				t.Fatal(err)
			}
			unix.Close(fd)
			return c
		}, nil},
		{"truncate", func(t *testing.T, ts *testStack, o *Object) *Object {
			size := uint64(4096)
			c, _, err := ts.Setattr(o, "d/f", Attr{Size: &size, FromHandle: -1})
			if err != nil {
				t.Fatal(err)
			}
			return c
		}, want[:4096]},
		{"link", func(t *testing.T, ts *testStack, o *Object) *Object {
			c, err := ts.Link(o, "d/f", ts.mustLookup(t, "e"), "e", "g")
			if err != nil {
				t.Fatal(err)
			}
			return c
		}, want},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := newMetaStack(t, bigLower())
			o := chmodMeta(t, ts, "d/f")
			before := lstat(t, filepath.Join(ts.upper, "d/f"))
			c := tc.do(t, ts, o)
			if c.Metacopy() || !c.DataUpper() || c.Ino != o.Ino {
				t.Errorf("object after the change: metacopy %v, ino %d", c.Metacopy(), c.Ino)
			}
			after := lstat(t, filepath.Join(ts.upper, "d/f"))
			if after.Mode&0o7777 != 0o640 {
				t.Errorf("mode %o: the placeholder's metadata was not kept", after.Mode&0o7777)
			}
			if after.Ino == before.Ino {
				t.Errorf("the data was copied into the placeholder in place, not renamed over it")
			}
			if len(tc.want) > 0 {
				assertFull(t, ts, "d/f")
			}
			for _, x := range []string{ts.metacopyXattr(), ts.redirectXattr()} {
				if _, err := getxattrPath(filepath.Join(ts.upper, "d/f"), x); err == nil {
					t.Errorf("%s left after the data copy-up", x)
				}
			}
			if v, err := getxattrPath(filepath.Join(ts.upper, "d/f"), "user.tag"); string(v) != "lower" {
				t.Errorf("user.tag %q, %v: xattrs lost", v, err)
			}
			ts.open(t)
			if got := ts.read(t, "d/f"); !bytes.Equal([]byte(got), tc.want) {
				t.Errorf("read %d bytes, want %d (the data as changed)", len(got), len(tc.want))
			}
			if got := ts.mustLookup(t, "d/f").Ino; got != o.Ino {
				t.Errorf("ino %d after remount, want %d", got, o.Ino)
			}
		})
	}
}

// TestMetacopyCrash checks that whatever a data copy-up left behind in the
// work directory, the file is the placeholder (showing the lower's data) or
// the full copy: the copy is built aside and renamed.
func TestMetacopyCrash(t *testing.T) {
	ts := newMetaStack(t, bigLower())
	chmodMeta(t, ts, "d/f")
	// A half-built copy, as a crash in the middle of buildCopy leaves it.
	half := filepath.Join(ts.work, "work", "#dead-1")
	if err := os.WriteFile(half, pattern(1000), 0o600); err != nil {
		t.Fatal(err)
	}
	ts.open(t)
	if exists(half) {
		t.Errorf("the half-built copy survived the remount")
	}
	o := ts.mustLookup(t, "d/f")
	if !o.Metacopy() {
		t.Errorf("not a metadata-only copy after the remount")
	}
	if got := ts.read(t, "d/f"); got != string(pattern(bigSize)) {
		t.Errorf("read: not the lower's data")
	}
}

func TestMetacopyRename(t *testing.T) {
	for _, chmodFirst := range []bool{true, false} {
		name := "lower"
		if chmodFirst {
			name = "metacopy"
		}
		t.Run(name, func(t *testing.T) {
			ts := newMetaStack(t, bigLower())
			if chmodFirst {
				chmodMeta(t, ts, "d/f")
			}
			c, err := ts.rename(t, "d/f", "e/g", 0)
			if err != nil {
				t.Fatal(err)
			}
			if !c.Metacopy() {
				t.Errorf("renamed object is no metadata-only copy")
			}
			assertMetacopy(t, ts, "e/g", "d/f")
			if !isWhiteoutAt(filepath.Join(ts.upper, "d/f")) && os.Geteuid() == 0 {
				t.Errorf("no whiteout at the old name")
			}
			ts.open(t)
			if got := ts.read(t, "e/g"); got != string(pattern(bigSize)) {
				t.Errorf("read after the rename: not the lower's data")
			}
			ts.absent(t, "d/f")
			// Renamed again: the redirect still names the data.
			if _, err := ts.rename(t, "e/g", "h", 0); err != nil {
				t.Fatal(err)
			}
			assertMetacopy(t, ts, "h", "d/f")
			openCopiesData(t, ts, "h", unix.O_RDWR)
		})
	}
}

func TestMetacopyCommit(t *testing.T) {
	ts := newMetaStack(t, bigLower())
	chmodMeta(t, ts, "d/f")
	if _, err := ts.Commit(nil); err != nil {
		t.Fatal(err)
	}
	for _, remount := range []bool{false, true} {
		if remount {
			ts.open(t)
		}
		o := ts.mustLookup(t, "d/f")
		if !o.Metacopy() || o.Upper() {
			t.Errorf("remount %v: after the commit, a metadata-only copy in the committed layer expected", remount)
		}
		if got := ts.read(t, "d/f"); got != string(pattern(bigSize)) {
			t.Errorf("remount %v: read: not the lower's data", remount)
		}
	}
	// A second change of metadata copies the committed placeholder's
	// metadata; the data stays in the bottom layer.
	mode := uint32(0o604)
	c, _, err := ts.Setattr(ts.mustLookup(t, "d/f"), "d/f", Attr{Mode: &mode, FromHandle: -1})
	if err != nil {
		t.Fatal(err)
	}
	if !c.Metacopy() {
		t.Errorf("no metadata-only copy of a committed one")
	}
	src, err := ts.Which("d/f")
	if err != nil || src.Data != ts.lowers[0] {
		t.Errorf("which: %+v, %v; want the data in %s", src, err, ts.lowers[0])
	}
	if got := ts.read(t, "d/f"); got != string(pattern(bigSize)) {
		t.Errorf("read: not the lower's data")
	}
	openCopiesData(t, ts, "d/f", unix.O_WRONLY)
}

// TestMetacopyForeignRelativeRedirect reads a relative redirect, as the
// kernel may write for a rename within one directory.
func TestMetacopyForeignRelativeRedirect(t *testing.T) {
	ts := newMetaStack(t, bigLower())
	chmodMeta(t, ts, "d/f")
	p := filepath.Join(ts.upper, "d/f")
	if err := unix.Setxattr(p, ts.redirectXattr(), []byte("f"), 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(p, filepath.Join(ts.upper, "d/renamed")); err != nil {
		t.Fatal(err)
	}
	ts.open(t)
	if got := ts.read(t, "d/renamed"); got != string(pattern(bigSize)) {
		t.Errorf("read: not the data the relative redirect names")
	}
}

// hasData reports whether the file p has any data blocks (xattrs may take
// a block of their own on ext4, so st_blocks does not tell).
func hasData(t *testing.T, p string) bool {
	t.Helper()
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	_, err = unix.Seek(fd, 0, unix.SEEK_DATA)
	if errors.Is(err, unix.ENXIO) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	return true
}

// TestSameData checks which objects SameData calls one file's data: a
// metadata-only copy and its lower, but neither of them and the full
// copy-up that replaces them, nor that copy once a commit froze it.
func TestSameData(t *testing.T) {
	ts := newMetaStack(t, bigLower())
	low := ts.mustLookup(t, "d/f")
	mode := uint32(0o600)
	meta, _, err := ts.Setattr(low, "d/f", Attr{Mode: &mode, FromHandle: -1})
	if err != nil {
		t.Fatal(err)
	}
	if !meta.Metacopy() {
		t.Fatal("chmod of d/f made no metadata-only copy")
	}
	fd, full, err := ts.Open(meta, "d/f", unix.O_WRONLY)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	again := ts.mustLookup(t, "d/f")
	for _, c := range []struct {
		what string
		a, b *Object
		want bool
	}{
		{"lower, itself", low, low, true},
		{"lower, its metadata-only copy", low, meta, true},
		{"metadata-only copy, full copy", meta, full, false},
		{"lower, full copy", low, full, false},
		{"full copy, looked up again", full, again, true},
	} {
		if got := c.a.SameData("d/f", c.b, "d/f"); got != c.want {
			t.Errorf("SameData(%s) = %v, want %v", c.what, got, c.want)
		}
	}
	if _, err := ts.Commit(nil); err != nil {
		t.Fatal(err)
	}
	if a, b := full.SameData("d/f", again, "d/f"), full.SameData("d/f", low, "d/f"); !a || b {
		t.Errorf("after a commit: SameData(frozen copy, itself looked up before) = %v, SameData(frozen copy, lower) = %v; want true, false", a, b)
	}
}
