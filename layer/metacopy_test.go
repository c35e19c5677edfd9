package layer

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/unionmount/unionmount/cow"
	"golang.org/x/sys/unix"
)

// metacopyData is the lower data of the metacopy tests: bigger than
// cow.MetacopyMin, different at every offset.
func metacopyData() []byte {
	b := make([]byte, 256<<10)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

// TestWriteMetacopy commits a stack whose upper holds metadata-only copies
// (one changed in place, one renamed: a redirect) and checks that the layer
// holds their whole data, with the upper's metadata, and that Export of
// the committed layers does too.
func TestWriteMetacopy(t *testing.T) {
	root := t.TempDir()
	lower, upper, work := filepath.Join(root, "lower"), filepath.Join(root, "upper"), filepath.Join(root, "work")
	for _, d := range []string{lower + "/d", upper, work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	data := metacopyData()
	for _, n := range []string{"d/f", "d/g"} {
		if err := os.WriteFile(filepath.Join(lower, n), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	st, err := cow.Open(cow.Config{Lowers: []string{lower}, Upper: upper, Work: work, Metacopy: true, UserXattr: os.Geteuid() != 0})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	lookup := func(rel string) (*cow.Object, *cow.Object) {
		t.Helper()
		root, err := st.Root()
		if err != nil {
			t.Fatal(err)
		}
		d, err := st.Lookup(root, "", "d")
		if err != nil {
			t.Fatal(err)
		}
		o, err := st.Lookup(d, "d", filepath.Base(rel))
		if err != nil {
			t.Fatal(err)
		}
		return d, o
	}
	mode := uint32(0o600)
	_, f := lookup("d/f")
	if c, _, err := st.Setattr(f, "d/f", cow.Attr{Mode: &mode, FromHandle: -1}); err != nil || !c.Metacopy() {
		t.Fatalf("chmod: %v (metacopy: %v)", err, c != nil && c.Metacopy())
	}
	d, g := lookup("d/g")
	if c, err := st.Rename(d, "d", "g", g, d, "d", "h", nil, 0); err != nil || !c.Metacopy() {
		t.Fatalf("rename: %v (metacopy: %v)", err, c != nil && c.Metacopy())
	}
	c, err := st.Commit(nil)
	if err != nil {
		t.Fatal(err)
	}
	_, ents := writeLayer(t, c.Dir, c.Lowers, Options{})
	got := map[string]tarEntry{}
	for _, e := range ents {
		got[e.Name] = e
	}
	if e := got["d/f"]; e.Header == nil || !bytes.Equal(e.data, data) || e.Mode != 0o600 {
		t.Errorf("d/f in the layer: not the lower's data with mode 0600 (%d bytes)", len(e.data))
	}
	if e := got["d/h"]; e.Header == nil || !bytes.Equal(e.data, data) {
		t.Errorf("d/h in the layer: not the data its redirect names (%d bytes)", len(e.data))
	}
	if _, ok := got["d/.wh.g"]; !ok {
		t.Errorf("no whiteout for the renamed d/g")
	}
	for _, e := range ents {
		for k := range e.PAXRecords {
			if bytes.Contains([]byte(k), []byte("overlay.")) {
				t.Errorf("%s carries %s", e.Name, k)
			}
		}
	}

	var buf bytes.Buffer
	if _, err := Export(&buf, append([]string{c.Dir}, c.Lowers...), Options{}); err != nil {
		t.Fatal(err)
	}
	exported := map[string][]byte{}
	for _, e := range readLayer(t, buf.Bytes()) {
		exported[e.Name] = e.data
	}
	for _, n := range []string{"d/f", "d/h"} {
		if !bytes.Equal(exported[n], data) {
			t.Errorf("export: %s is not the lower's data (%d bytes)", n, len(exported[n]))
		}
	}
}

// TestWriteMetacopyWithoutData refuses to write a metadata-only copy whose
// data no lower has, rather than writing its placeholder.
func TestWriteMetacopyWithoutData(t *testing.T) {
	upper := t.TempDir()
	p := filepath.Join(upper, "f")
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, 100000); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(p, "user.overlay.metacopy", nil, 0); err != nil {
		t.Skipf("user xattrs: %v", err)
	}
	_, err := Write(&bytes.Buffer{}, upper, nil, Options{})
	if !errors.Is(err, unix.ENOENT) {
		t.Errorf("Write = %v, want an error wrapping ENOENT (no data)", err)
	}
}
