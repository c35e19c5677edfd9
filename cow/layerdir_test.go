package cow

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// listLayerDir renders ReadDir of rel as "name[/] ..." with "-name" for a
// whiteout, and the opaque flag.
func listLayerDir(t *testing.T, d *LayerDir, rel string) (string, bool) {
	t.Helper()
	ents, opaque, err := d.ReadDir(rel)
	if err != nil {
		t.Fatalf("ReadDir %q: %v", rel, err)
	}
	var names []string
	for _, e := range ents {
		switch {
		case e.Whiteout:
			if e.Stat != (unix.Stat_t{}) {
				t.Errorf("%s: whiteout with a stat", e.Name)
			}
			names = append(names, "-"+e.Name)
		case e.Stat.Mode&unix.S_IFMT == unix.S_IFDIR:
			names = append(names, e.Name+"/")
		default:
			names = append(names, e.Name)
		}
	}
	return strings.Join(names, " "), opaque
}

func openLayerDir(t *testing.T, root string) *LayerDir {
	t.Helper()
	d, err := OpenLayerDir(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// TestLayerDirReadDir reads the markers of the three writers of layer
// directories: kernel overlayfs, fuse-overlayfs (all its redundant markers
// at once) and OCI unpackers that keep ".wh." files.
func TestLayerDirReadDir(t *testing.T) {
	type want struct {
		rel, list string
		opaque    bool
	}
	cases := []struct {
		name  string
		tree  []entry
		wants []want
	}{{
		name: "kernel",
		tree: []entry{
			file("keep", "k"), whiteout("gone"), opaque("o"), file("o/new", "n"),
			dir("plain"), whiteout("plain/x"), symlink("ln", "keep"),
		},
		wants: []want{
			{"", "-gone keep ln o/ plain/", false},
			{"o", "new", true},
			{"plain", "-x", false},
		},
	}, {
		name: "fuse-overlayfs",
		tree: []entry{
			opaque("d"), file("d/"+opaqueMarker, ""), whiteout("d/" + fuseOpaqueMarker), file("d/f", "f"),
			// Both whiteout forms for one name, as fuse-overlayfs
			// writes when it falls back from mknod.
			dir("w"), whiteout("w/x"), marker("w/x"),
			opaqueX("u", "user.fuseoverlayfs.opaque"),
		},
		wants: []want{
			{"", "d/ u/ w/", false},
			{"d", "f", true},
			{"w", "-x", false},
			{"u", "", true},
		},
	}, {
		name: "oci",
		tree: []entry{
			dir("a"), marker("a/x"), opqMarker("b"), file("b/y", "y"),
			// An explicit replacement: ".wh.c" beside a new c.
			marker("c"), dir("c"), file("c/z", "z"),
			opaqueX("u", "user.overlay.opaque"),
			// A file that stays, beside its own marker.
			marker("a/both"), file("a/both", "b"),
			// Names that hide nothing a layer can hold.
			file("a/.wh.", ""), file("a/.wh..wh.plnk", ""),
		},
		wants: []want{
			{"", "a/ b/ c/ u/", false},
			{"a", "both -x", false},
			{"b", "y", true},
			{"c", "z", true},
			{"u", "", true},
		},
	}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			buildTree(t, root, c.tree)
			d := openLayerDir(t, root)
			for _, w := range c.wants {
				list, opaque := listLayerDir(t, d, w.rel)
				if list != w.list || opaque != w.opaque {
					t.Errorf("ReadDir(%q) = %q opaque %v, want %q opaque %v", w.rel, list, opaque, w.list, w.opaque)
				}
			}
		})
	}
}

// TestLayerDirReadDirReplaced checks that a real name wins over its own
// marker: "c" is listed once, as the directory, and not as a whiteout.
func TestLayerDirReadDirReplaced(t *testing.T) {
	root := t.TempDir()
	buildTree(t, root, []entry{marker("c"), dir("c")})
	d := openLayerDir(t, root)
	ents, _, err := d.ReadDir("")
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 || ents[0].Name != "c" || ents[0].Whiteout || ents[0].Stat.Mode&unix.S_IFMT != unix.S_IFDIR {
		t.Fatalf("ReadDir = %+v, want the directory c only", ents)
	}
}

// capV2 is a security.capability value (VFS_CAP_REVISION_2, effective) that
// grants CAP_NET_BIND_SERVICE.
var capV2 = []byte{1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}

func TestLayerDirXattrs(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	f := file("f", "data").
		withXattr("user.b", "2").withXattr("user.a", "1").
		withXattr("user.overlay.origin", "x").withXattr("trusted.overlay.unionmount.ino", "7").
		withXattr("trusted.overlay.overlay.mine", "escaped").
		withXattr("user.fuseoverlayfs.override_stat", "0:0:0755").
		withXattr("user.rootlesscontainers", "x").withXattr("user.containers.override_stat", "x").
		withXattr("trusted.mine", "t").withXattr("security.capability", string(capV2)).
		withXattr("user.empty", "")
	buildTree(t, root, []entry{f, symlink("ln", "f"), opaque("d")})
	d := openLayerDir(t, root)
	xs, err := d.Xattrs("f")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, x := range xs {
		got = append(got, x.Name+"="+string(x.Value))
	}
	want := []string{"security.capability=" + string(capV2), "trusted.mine=t", "user.a=1", "user.b=2"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("Xattrs = %q, want %q", got, want)
	}
	// The opaque mark is the layer's, not the directory's.
	if xs, err := d.Xattrs("d"); err != nil || len(xs) != 0 {
		t.Errorf("Xattrs(d) = %v, %v; want none", xs, err)
	}
	// A symlink's own xattrs, not its target's.
	if xs, err := d.Xattrs("ln"); err != nil || len(xs) != 0 {
		t.Errorf("Xattrs(ln) = %v, %v; want none", xs, err)
	}
}

// TestLayerDirRefusesRedirectAndMetacopy checks that a directory written
// with redirect_dir (or marked metacopy) is refused: a walk of it alone
// would lose data. A regular file may be a metadata-only copy: its xattrs
// are read, without the union's, and MetacopyOrigin says where its data is.
func TestLayerDirRefusesRedirectAndMetacopy(t *testing.T) {
	root := t.TempDir()
	buildTree(t, root, []entry{
		dir("renamed").withXattr("user.overlay.redirect", "/old"),
		dir("metadir").withXattr("user.overlay.metacopy", ""),
		file("meta", "").withXattr("user.overlay.metacopy", "").withXattr("user.overlay.redirect", "/old/f").withXattr("user.x", "1"),
		file("plain", "p"),
	})
	d := openLayerDir(t, root)
	if _, _, err := d.ReadDir("renamed"); !errors.Is(err, unix.ENOTSUP) || !strings.Contains(err.Error(), "redirect_dir/metacopy") {
		t.Errorf("ReadDir(renamed) = %v, want ENOTSUP naming redirect_dir/metacopy", err)
	}
	for _, rel := range []string{"renamed", "metadir"} {
		if _, err := d.Xattrs(rel); !errors.Is(err, unix.ENOTSUP) {
			t.Errorf("Xattrs(%s) = %v, want ENOTSUP", rel, err)
		}
	}
	if xs, err := d.Xattrs("meta"); err != nil || len(xs) != 1 || xs[0].Name != "user.x" {
		t.Errorf("Xattrs(meta) = %v, %v; want user.x only", xs, err)
	}
	if origin, ok, err := d.MetacopyOrigin("meta"); err != nil || !ok || origin != "old/f" {
		t.Errorf("MetacopyOrigin(meta) = %q, %v, %v; want old/f", origin, ok, err)
	}
	if _, ok, err := d.MetacopyOrigin("plain"); err != nil || ok {
		t.Errorf("MetacopyOrigin(plain) = %v, %v; want no", ok, err)
	}
}

func TestLayerDirReads(t *testing.T) {
	root := t.TempDir()
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("no"), 0o644); err != nil {
		t.Fatal(err)
	}
	buildTree(t, root, []entry{
		file("d/f", "hello"), symlink("ln", "d/f"), fifo("p"), symlink("out", outside),
	})
	d := openLayerDir(t, root)

	f, err := d.Open("d/f")
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(f)
	f.Close()
	if err != nil || string(data) != "hello" {
		t.Errorf("Open(d/f) read %q, %v", data, err)
	}
	if _, err := d.Open("ln"); !errors.Is(err, unix.ELOOP) {
		t.Errorf("Open(ln) = %v, want ELOOP", err)
	}
	if _, err := d.Open("out/secret"); err == nil {
		t.Errorf("Open(out/secret) went through a symlink")
	}
	done := make(chan error, 1)
	go func() { _, err := d.Open("p"); done <- err }()
	select {
	case err := <-done:
		if !errors.Is(err, unix.EINVAL) {
			t.Errorf("Open(p) = %v, want EINVAL", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Open of a FIFO blocks")
	}

	if target, err := d.Readlink("ln"); err != nil || target != "d/f" {
		t.Errorf("Readlink(ln) = %q, %v", target, err)
	}
	if _, err := d.Readlink("out/secret"); err == nil {
		t.Errorf("Readlink(out/secret) went through a symlink")
	}
	st, err := d.Lstat("ln")
	if err != nil || st.Mode&unix.S_IFMT != unix.S_IFLNK {
		t.Errorf("Lstat(ln) = %o, %v; want a symlink", st.Mode, err)
	}
	if _, err := d.Lstat("out/secret"); err == nil {
		t.Errorf("Lstat(out/secret) went through a symlink")
	}
	if _, err := d.Lstat("nope"); !errors.Is(err, unix.ENOENT) {
		t.Errorf("Lstat(nope) = %v, want ENOENT", err)
	}
}

func TestLowerView(t *testing.T) {
	top, bottom := t.TempDir(), t.TempDir()
	buildTree(t, bottom, []entry{
		file("a/x", "x"), file("a/y", "y"), file("f", "f"), file("o/old", "old"), file("gone/z", "z"),
	})
	buildTree(t, top, []entry{
		marker("a/x"), file("a/new", "n"), opqMarker("o"), file("o/mine", "m"), marker("gone"),
	})
	v, err := OpenLowerView([]string{top, bottom})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	for rel, want := range map[string]string{
		"": "dir", "a": "dir", "a/x": "", "a/y": "file", "a/new": "file", "f": "file",
		"f/sub": "", "o/old": "", "o/mine": "file", "gone": "", "gone/z": "", "nope/deeper": "",
	} {
		o, err := v.LookupPath(rel)
		got := ""
		switch {
		case err != nil:
			t.Fatalf("LookupPath(%q): %v", rel, err)
		case o == nil:
		case o.IsDir():
			got = "dir"
		default:
			got = "file"
		}
		if got != want {
			t.Errorf("LookupPath(%q) = %q, want %q", rel, got, want)
		}
	}
	a, err := v.LookupPath("a")
	if err != nil {
		t.Fatal(err)
	}
	ents, err := v.Readdir(a, "a")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name)
	}
	if strings.Join(names, " ") != "new y" {
		t.Errorf("Readdir(a) = %q, want \"new y\"", names)
	}

	empty, err := OpenLowerView(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer empty.Close()
	if o, err := empty.LookupPath(""); o != nil || err != nil {
		t.Errorf("empty view root = %v, %v; want nothing", o, err)
	}
	if o, err := empty.LookupPath("a"); o != nil || err != nil {
		t.Errorf("empty view a = %v, %v; want nothing", o, err)
	}
}
