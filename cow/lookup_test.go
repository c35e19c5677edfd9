package cow

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// fixture is a stack of layer trees: the upper and the lowers, top-most
// first.
type fixture struct {
	name   string
	upper  []entry
	lowers [][]entry
}

var fixtures = []fixture{
	{
		name:  "merge",
		upper: []entry{file("a", "up"), file("d/w", "upw")},
		lowers: [][]entry{
			{file("a", "l0"), file("b", "l0b"), file("d/y", "l0y"), file("d/z", "l0z"), symlink("s", "a")},
			{file("a", "l1"), file("d/x", "l1x"), file("d/y", "l1y"), file("e/k", "l1k"), fifo("p")},
		},
	},
	{
		name:  "whiteouts",
		upper: []entry{whiteout("a"), file("m", "upm"), dir("d"), whiteout("d/y")},
		lowers: [][]entry{
			{whiteout("b"), file("c", "l0c"), whiteout("d/x"), whiteout("m"), whiteout("n")},
			{file("a", "l1a"), file("b", "l1b"), file("c", "l1c"), file("d/x", "l1x"), file("d/y", "l1y"),
				file("d/z", "l1z"), file("m/p", "l1p"), dir("n")},
		},
	},
	{
		name: "opaque",
		upper: []entry{
			opaque("o5"), file("o5/a", "up"),
			dir("o1"), file("o1/u", "up"),
		},
		lowers: [][]entry{
			{
				opaque("o1"), file("o1/a", "l0"),
				opaqueX("o2", "user.overlay.opaque"), file("o2/a", "l0"),
				opaqueX("o3", "user.fuseoverlayfs.opaque"), file("o3/a", "l0"),
				opqMarker("o4"), file("o4/a", "l0"),
				dir("p"), file("p/y", "l0"),
			},
			{
				file("o1/x", "l1"), file("o2/x", "l1"), file("o3/x", "l1"), file("o4/x", "l1"),
				file("o5/x", "l1"), file("p/x", "l1"),
			},
		},
	},
	{
		name:  "markers",
		upper: []entry{marker("e"), file("f", "upf"), dir("d"), marker("d/z")},
		lowers: [][]entry{
			{marker("a"), file("b", "l0b"), marker("b"), dir("d"), marker("d/x"), marker("f")},
			{file("a", "l1a"), file("b", "l1b"), file("d/x", "l1x"), file("d/y", "l1y"), file("d/z", "l1z"),
				file("e/k", "l1k"), file("f", "l1f")},
		},
	},
	{
		name:  "types",
		upper: []entry{file("h2/z", "up"), file("f2", "upf2")},
		lowers: [][]entry{
			{file("f", "l0f"), file("g/y", "l0y"), file("h", "l0h"), file("h2", "l0h2"), dir("f2")},
			{file("f/x", "l1x"), file("g", "l1g"), file("h/x", "l1x"), file("h2/x", "l1x"), file("f2/x", "l1x")},
		},
	},
}

func fixtureNamed(t *testing.T, name string) fixture {
	t.Helper()
	for _, f := range fixtures {
		if f.name == name {
			return f
		}
	}
	t.Fatalf("no fixture %s", name)
	return fixture{}
}

func (f fixture) stack(t *testing.T) *testStack {
	t.Helper()
	return newTestStack(t, f.upper, f.lowers...)
}

// describeMerged describes the merged object rel for comparisons: its type
// and, for a file, its data; "" when the merged view has no rel.
func describeMerged(t *testing.T, ts *testStack, rel string) string {
	t.Helper()
	o, err := ts.lookup(rel)
	return describeFound(t, ts, rel, o, err)
}

// describeFound is describeMerged of what a lookup of rel returned.
func describeFound(t *testing.T, ts *testStack, rel string, o *Object, err error) string {
	t.Helper()
	if errors.Is(err, unix.ENOENT) {
		wantErrno(t, err, unix.ENOENT)
		return ""
	}
	if err != nil {
		t.Fatalf("lookup %s: %v", rel, err)
	}
	switch o.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "file " + ts.read(t, rel)
	case unix.S_IFDIR:
		return "dir"
	case unix.S_IFLNK:
		target, err := ts.Readlink(o, rel)
		if err != nil {
			t.Fatal(err)
		}
		return "symlink " + target
	case unix.S_IFIFO:
		return "fifo"
	}
	return "other"
}

func TestLookup(t *testing.T) {
	tests := []struct {
		fixture string
		want    map[string]string // path: describeMerged, "" for ENOENT
	}{
		{"merge", map[string]string{
			"a": "file up", "b": "file l0b", "d": "dir", "d/w": "file upw", "d/x": "file l1x",
			"d/y": "file l0y", "d/z": "file l0z", "e/k": "file l1k", "s": "symlink a", "p": "fifo",
			"nope": "", "d/nope": "", "a/x": "",
		}},
		{"whiteouts", map[string]string{
			"a":   "", // upper whiteout
			"b":   "", // whiteout in the middle lower
			"c":   "file l0c",
			"d/x": "", // middle lower whiteout inside a merged dir
			"d/y": "", // upper whiteout inside a merged dir
			"d/z": "file l1z",
			"m":   "file upm", // an upper file over a middle whiteout
			"m/p": "",
			"n":   "",
		}},
		{"opaque", map[string]string{
			"o1/a": "file l0", "o1/u": "file up", "o1/x": "",
			"o2/a": "file l0", "o2/x": "",
			"o3/a": "file l0", "o3/x": "",
			"o4/a": "file l0", "o4/x": "", "o4/.wh..wh..opq": "",
			"o5/a": "file up", "o5/x": "",
			"p/x": "file l1", "p/y": "file l0",
		}},
		{"markers", map[string]string{
			"a": "", ".wh.a": "",
			"b":     "file l0b", // a marker hides below only
			".wh.b": "",
			"d/x":   "", "d/y": "file l1y", "d/z": "", "d/.wh.z": "",
			"e": "", "e/k": "", ".wh.e": "",
			"f": "file upf",
		}},
		{"types", map[string]string{
			"f": "file l0f", "f/x": "", // a file hides the directory below
			"g": "dir", "g/y": "file l0y", "g/x": "", // a directory over a file stops the merge
			"h": "file l0h", "h/x": "",
			"h2": "dir", "h2/z": "file up", "h2/x": "", // ... even when a directory is below the file
			"f2": "file upf2", "f2/x": "",
		}},
	}
	for _, tc := range tests {
		t.Run(tc.fixture, func(t *testing.T) {
			ts := fixtureNamed(t, tc.fixture).stack(t)
			for p, want := range tc.want {
				if got := describeMerged(t, ts, p); got != want {
					t.Errorf("%s: got %q, want %q", p, got, want)
				}
			}
		})
	}
}

func TestLookupReservedNames(t *testing.T) {
	ts := newTestStack(t, []entry{file(".wh.x", ""), file("x", "up")}, []entry{file(".wh.y", "")})
	root := ts.mustLookup(t, "")
	for _, name := range []string{".wh.x", ".wh.y", ".wh..wh..opq", ".wh.", ".", ".."} {
		_, err := ts.Lookup(root, "", name)
		wantErrno(t, err, unix.ENOENT)
	}
}

// layerNames returns the names present at rel in any of ts's layers.
func layerNames(t *testing.T, ts *testStack, rel string) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	for _, d := range append([]string{ts.upper}, ts.lowers...) {
		ents, err := os.ReadDir(filepath.Join(d, rel))
		if err != nil {
			continue
		}
		for _, e := range ents {
			names[e.Name()] = true
			if target, ok := markerTarget(e.Name()); ok && target != "" {
				names[target] = true
			}
		}
	}
	return names
}

// TestLookupAgreesWithReaddir checks, in every merged directory of every
// fixture, that Readdir lists exactly the names, among those present in any
// layer, that Lookup finds, with the same inode number and type.
func TestLookupAgreesWithReaddir(t *testing.T) {
	for _, f := range fixtures {
		t.Run(f.name, func(t *testing.T) {
			ts := f.stack(t)
			checkAgreement(t, ts, ts.mustLookup(t, ""), "")
		})
	}
}

func checkAgreement(t *testing.T, ts *testStack, dir *Object, rel string) {
	t.Helper()
	ents, err := ts.Readdir(dir, rel)
	if err != nil {
		t.Fatalf("readdir %q: %v", rel, err)
	}
	listed := map[string]DirEntry{}
	for _, e := range ents {
		if _, dup := listed[e.Name]; dup {
			t.Errorf("readdir %q: %s listed twice", rel, e.Name)
		}
		listed[e.Name] = e
	}
	for name := range layerNames(t, ts, rel) {
		o, err := ts.Lookup(dir, rel, name)
		e, ok := listed[name]
		switch {
		case err != nil && !errors.Is(err, unix.ENOENT):
			t.Fatalf("lookup %s: %v", join(rel, name), err)
		case err != nil && ok:
			t.Errorf("%s: listed by Readdir, but Lookup: %v", join(rel, name), err)
		case err == nil && !ok:
			t.Errorf("%s: found by Lookup, not listed by Readdir", join(rel, name))
		case err == nil:
			if e.Ino != o.Ino {
				t.Errorf("%s: Readdir ino %d, Lookup ino %d", join(rel, name), e.Ino, o.Ino)
			}
			if e.Mode != o.Mode&unix.S_IFMT {
				t.Errorf("%s: Readdir type %o, Lookup type %o", join(rel, name), e.Mode, o.Mode&unix.S_IFMT)
			}
			if o.IsDir() {
				checkAgreement(t, ts, o, join(rel, name))
			}
		}
	}
}

func TestReaddir(t *testing.T) {
	tests := []struct {
		fixture, dir string
		want         string // sorted "name:type" pairs
	}{
		{"merge", "", "a:reg b:reg d:dir e:dir p:fifo s:lnk"},
		{"merge", "d", "w:reg x:reg y:reg z:reg"},
		{"whiteouts", "", "c:reg d:dir m:reg"},
		{"whiteouts", "d", "z:reg"},
		{"opaque", "o1", "a:reg u:reg"},
		{"opaque", "o2", "a:reg"},
		{"opaque", "o3", "a:reg"},
		{"opaque", "o4", "a:reg"},
		{"opaque", "o5", "a:reg"},
		{"opaque", "p", "x:reg y:reg"},
		{"markers", "", "b:reg d:dir f:reg"},
		{"markers", "d", "y:reg"},
		{"types", "", "f:reg f2:reg g:dir h:reg h2:dir"},
		{"types", "g", "y:reg"},
		{"types", "h2", "z:reg"},
	}
	typeNames := map[uint32]string{
		unix.S_IFREG: "reg", unix.S_IFDIR: "dir", unix.S_IFLNK: "lnk", unix.S_IFIFO: "fifo",
		unix.S_IFCHR: "chr",
	}
	for _, tc := range tests {
		t.Run(tc.fixture+"/"+tc.dir, func(t *testing.T) {
			ts := fixtureNamed(t, tc.fixture).stack(t)
			dir := ts.mustLookup(t, tc.dir)
			ents, err := ts.Readdir(dir, tc.dir)
			if err != nil {
				t.Fatal(err)
			}
			sort.Slice(ents, func(i, j int) bool { return ents[i].Name < ents[j].Name })
			var got []string
			for _, e := range ents {
				got = append(got, e.Name+":"+typeNames[e.Mode])
				o, err := ts.Lookup(dir, tc.dir, e.Name)
				if err != nil {
					t.Errorf("%s: %v", e.Name, err)
					continue
				}
				if o.Ino != e.Ino {
					t.Errorf("%s: Readdir ino %d, Lookup ino %d", e.Name, e.Ino, o.Ino)
				}
				st, err := ts.Stat(o, join(tc.dir, e.Name))
				if err != nil {
					t.Fatal(err)
				}
				if st.Ino != e.Ino || st.Mode&unix.S_IFMT != e.Mode {
					t.Errorf("%s: Stat ino %d type %o, Readdir ino %d type %o", e.Name, st.Ino, st.Mode&unix.S_IFMT, e.Ino, e.Mode)
				}
			}
			if g := strings.Join(got, " "); g != tc.want {
				t.Errorf("got %q, want %q", g, tc.want)
			}
		})
	}
}

// TestReaddirInoAfterCopyUp checks that copy-up keeps the inode numbers that
// Readdir and Lookup report, for every type of object.
func TestReaddirInoAfterCopyUp(t *testing.T) {
	requireRoot(t)
	ts := newTestStack(t, nil, []entry{
		file("d/f", "x"), dir("d/sub"), symlink("d/l", "f"), fifo("d/p"), chardev("d/c", unix.Mkdev(1, 3)),
	})
	names := []string{"f", "sub", "l", "p", "c"}
	before := map[string]uint64{}
	for _, n := range names {
		before[n] = ts.mustLookup(t, "d/"+n).Ino
	}
	for _, n := range names {
		if _, err := ts.CopyUp(ts.mustLookup(t, "d/"+n), "d/"+n, true); err != nil {
			t.Fatalf("copy up %s: %v", n, err)
		}
	}
	d := ts.mustLookup(t, "d")
	if !d.Upper() {
		t.Fatal("d not copied up")
	}
	ents, err := ts.Readdir(d, "d")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		o := ts.mustLookup(t, "d/"+e.Name)
		if !o.Upper() {
			t.Errorf("%s: not in the upper after copy-up", e.Name)
		}
		if o.Ino != before[e.Name] || e.Ino != before[e.Name] {
			t.Errorf("%s: ino before copy-up %d, after: Lookup %d, Readdir %d", e.Name, before[e.Name], o.Ino, e.Ino)
		}
	}
	if len(ents) != len(names) {
		t.Errorf("got %d entries, want %d", len(ents), len(names))
	}
}

// TestStaleDirSeesUpperChanges looks up children through a directory object
// found while the upper had no directory at its path, as a FUSE node keeps
// one: every change made through the stack must show through it, whether
// or not the stack remembers that absence (Config.Exclusive). Only a change
// made behind the stack's back goes unseen, and only when it may remember.
func TestStaleDirSeesUpperChanges(t *testing.T) {
	requireRoot(t) // whiteouts are character devices
	for _, exclusive := range []bool{true, false} {
		t.Run(map[bool]string{true: "exclusive", false: "shared"}[exclusive], func(t *testing.T) {
			ts := buildLayers(t, nil, [][]entry{{file("d/a", "la"), file("d/b", "lb"), file("d/e/x", "lx"), file("f/z", "lz")}})
			ts.cfg = Config{Lowers: ts.lowers, Upper: ts.upper, Work: ts.work, Exclusive: exclusive}
			ts.open(t)
			d := ts.mustLookup(t, "d")
			list := func() string {
				t.Helper()
				ents, err := ts.Readdir(d, "d")
				if err != nil {
					t.Fatal(err)
				}
				var names []string
				for _, e := range ents {
					names = append(names, e.Name)
				}
				sort.Strings(names)
				return strings.Join(names, " ")
			}
			expect := func(step, name, want, wantList string) {
				t.Helper()
				if got := describeChild(t, ts, d, "d", name); got != want {
					t.Errorf("%s: d/%s through the old object is %q, want %q", step, name, got, want)
				}
				if got := list(); got != wantList {
					t.Errorf("%s: listing through the old object is %q, want %q", step, got, wantList)
				}
			}
			expect("before", "a", "file la", "a b e")
			if _, err := os.Stat(filepath.Join(ts.upper, "d")); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("upper/d exists before any change: %v", err)
			}

			ts.create(t, "d/new", "n", Owner{}) // copies d up
			expect("create", "new", "file n", "a b e new")
			ts.unlink(t, "d/a") // a whiteout
			expect("unlink", "a", "", "b e new")

			// A commit leaves a fresh upper without d; the object found
			// before it still sees what the commit froze, then what
			// changes next.
			if _, err := ts.Commit(nil); err != nil {
				t.Fatal(err)
			}
			d = ts.mustLookup(t, "d")
			expect("commit", "new", "file n", "b e new")
			ts.mkdir(t, "d/e/sub") // copies d and d/e up
			expect("mkdir below", "e", "dir", "b e new")
			ts.unlink(t, "d/b")
			expect("unlink after commit", "b", "", "e new")

			// Behind the stack's back, in a directory the upper lacks:
			// seen at once when the stack may not remember, else once
			// the stack next changes the upper.
			f := ts.mustLookup(t, "f")
			if _, err := ts.Lookup(f, "f", "z"); err != nil {
				t.Fatal(err)
			}
			buildTree(t, ts.upper, []entry{file("f/ext", "ext")})
			want := map[bool]string{true: "", false: "file ext"}[exclusive]
			if got := describeChild(t, ts, f, "f", "ext"); got != want {
				t.Errorf("f/ext made behind the stack's back: got %q, want %q", got, want)
			}
			ts.create(t, "other", "o", Owner{})
			if got := describeChild(t, ts, f, "f", "ext"); got != "file ext" {
				t.Errorf("f/ext after a change through the stack: got %q, want %q", got, "file ext")
			}
		})
	}
}

// describeChild is describeMerged of name, looked up in dir at dirRel.
func describeChild(t *testing.T, ts *testStack, dir *Object, dirRel, name string) string {
	t.Helper()
	o, err := ts.Lookup(dir, dirRel, name)
	return describeFound(t, ts, join(dirRel, name), o, err)
}

// TestListingAnswersLookups checks, in every merged directory of every
// fixture, that a lookup through a directory object that remembers its
// last listing (Config.Exclusive) finds exactly what a lookup through a
// fresh object finds, which stats every layer.
func TestListingAnswersLookups(t *testing.T) {
	for _, f := range fixtures {
		t.Run(f.name, func(t *testing.T) {
			ts := f.stack(t)
			ts.cfg.Exclusive = true
			ts.open(t)
			remembered := 0
			var walk func(rel string)
			walk = func(rel string) {
				listed, fresh := ts.mustLookup(t, rel), ts.mustLookup(t, rel)
				if _, err := ts.Readdir(listed, rel); err != nil {
					t.Fatalf("readdir %q: %v", rel, err)
				}
				if listed.listing() != nil {
					remembered++
				}
				for name := range layerNames(t, ts, rel) {
					got, gerr := ts.Lookup(listed, rel, name)
					want, werr := ts.Lookup(fresh, rel, name)
					if g, w := describeObject(got, gerr), describeObject(want, werr); g != w {
						t.Errorf("%s: after a listing %s, fresh %s", join(rel, name), g, w)
					}
					if werr == nil && want.IsDir() {
						walk(join(rel, name))
					}
				}
			}
			walk("")
			if f.name == "merge" && remembered == 0 {
				t.Error("no listing was remembered")
			}
		})
	}
}

// describeObject describes what a lookup found, for comparisons.
func describeObject(o *Object, err error) string {
	if err != nil {
		return "error " + err.Error()
	}
	s := fmt.Sprintf("%s mode %o ino %d lowers", o.Layer, o.Mode, o.Ino)
	for _, l := range o.Lowers {
		s += " " + l.String()
	}
	return s
}
