package store

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestImport(t *testing.T) {
	needTool(t, "tar", "gzip")
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	tmp := t.TempDir()
	root := filepath.Join(tmp, "root")
	buildBase(t, root)
	// Two tars of the same tree made differently: GNU format, names
	// with "./", gzip; and PAX, sorted, plain.
	gnu, pax := filepath.Join(tmp, "gnu.tar.gz"), filepath.Join(tmp, "pax.tar")
	run(t, "tar", "--format=gnu", "-czf", gnu, "-C", root, ".")
	run(t, "tar", "--format=posix", "--sort=name", "--xattrs", "-cf", pax, "-C", root, "etc", "bin", "opaq", "del", "deltree")
	var ids []string
	for _, f := range []string{gnu, pax} {
		s := newStore(t)
		in, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		img, err := s.Import(in, "imported", ImportOptions{Message: "from " + filepath.Base(f)})
		in.Close()
		if err != nil {
			t.Fatalf("import %s: %v", f, err)
		}
		if img.Name != "imported:latest" || len(img.DiffIDs()) != 1 || img.Config.History[0].Comment != "from "+filepath.Base(f) {
			t.Errorf("imported image %+v", img)
		}
		// The unpacked tree is the layer: no second unpack.
		if _, err := os.Stat(s.layerPath(img.DiffIDs()[0])); err != nil {
			t.Errorf("import left no layer directory: %v", err)
		}
		ids = append(ids, img.DiffIDs()[0].String())
		if os.Geteuid() == 0 {
			checkMerged(t, s, img, root)
		}
	}
	if ids[0] != ids[1] {
		t.Errorf("the same tree imported from two tars: diff_ids %s and %s", ids[0], ids[1])
	}
}

func TestImportRefusesWhiteouts(t *testing.T) {
	s := newStore(t)
	commitTestImages(t, s)
	before := snapshot(t, s.Dir())
	for _, name := range []string{"etc/.wh.passwd", ".wh..wh..opq", "a/.wh..wh..opq"} {
		data := tarBytes(t, []entry{{name: "etc/hello", data: []byte("hi")}, {name: name}})
		_, err := s.Import(bytes.NewReader(data), "bad", ImportOptions{})
		if err == nil || !strings.Contains(err.Error(), "whiteout") {
			t.Errorf("import of a rootfs with %s: %v, want a refusal", name, err)
		}
	}
	// A broken tar too.
	if _, err := s.Import(strings.NewReader(strings.Repeat("x", 2000)), "bad", ImportOptions{}); err == nil {
		t.Error("imported garbage")
	}
	if after := snapshot(t, s.Dir()); after != before {
		t.Errorf("refused imports changed the store:\n%s\nwas:\n%s", after, before)
	}
}
