package store

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

func TestOpenCreatesLayout(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "s")
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{v1.ImageLayoutFile, v1.ImageIndexFile, "blobs/sha256", layersDir, stagingDir} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("layout: %v", err)
		}
	}
	if imgs, err := s.Images(); err != nil || len(imgs) != 0 {
		t.Errorf("Images() = %v, %v; want none", imgs, err)
	}
	// Opening again keeps it.
	if _, err := Open(dir); err != nil {
		t.Fatal(err)
	}
}

func TestOpenRefusesOtherDirectory(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "precious"), "data")
	_, err := Open(dir)
	if err == nil || !strings.Contains(err.Error(), "not an OCI image layout") {
		t.Fatalf("Open(non-empty dir) = %v, want refusal", err)
	}
	if data, _ := os.ReadFile(filepath.Join(dir, "precious")); string(data) != "data" {
		t.Error("Open changed the directory")
	}
	// An empty directory becomes a store.
	if _, err := Open(t.TempDir()); err != nil {
		t.Fatalf("Open(empty dir): %v", err)
	}
}

func TestNormalizeName(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"alpine", "alpine:latest"},
		{"alpine:3.20", "alpine:3.20"},
		{"docker.io/library/alpine:3.20", "alpine:3.20"},
		{"docker.io/demo/l4", "demo/l4:latest"},
		{"localhost:5000/a/b:3", "localhost:5000/a/b:3"},
		{"localhost:5000/a/b", "localhost:5000/a/b:latest"},
		{"my_img-1.x:v1.0-rc", "my_img-1.x:v1.0-rc"},
	} {
		got, err := NormalizeName(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("NormalizeName(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "Alpine", "a b", "a:", "a::b", "../x", "a@sha256:00", "a:" + strings.Repeat("x", 129), "-a"} {
		if got, err := NormalizeName(bad); err == nil {
			t.Errorf("NormalizeName(%q) = %q, want an error", bad, got)
		}
	}
}

// The test image: a base tree, and changes over it that use every marker.

func buildBase(t *testing.T, dir string) {
	t.Helper()
	writeFile(t, filepath.Join(dir, "etc/passwd"), "root:x:0:0::/root:/bin/sh\n")
	writeFile(t, filepath.Join(dir, "etc/app/conf"), "a=1\n")
	writeFile(t, filepath.Join(dir, "bin/tool"), "#!/bin/sh\necho tool\n")
	if err := os.Chmod(filepath.Join(dir, "bin/tool"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(dir, "bin/tool"), filepath.Join(dir, "bin/tool2")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("tool", filepath.Join(dir, "bin/sh")); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "opaq/one"), "1")
	writeFile(t, filepath.Join(dir, "opaq/sub/x"), "x")
	writeFile(t, filepath.Join(dir, "del/me"), "gone soon")
	writeFile(t, filepath.Join(dir, "del/stay"), "stays")
	writeFile(t, filepath.Join(dir, "deltree/a/b"), "b")
}

// buildChanges writes, as an upper over buildBase's tree, the changes that
// buildMerged makes directly.
func buildChanges(t *testing.T, upper string) {
	t.Helper()
	writeFile(t, filepath.Join(upper, "etc/passwd"), "root:x:0:0::/root:/bin/sh\nme:x:1000:1000::/home/me:/bin/sh\n")
	whiteout(t, filepath.Join(upper, "del"), "me")
	whiteout(t, upper, "deltree")
	writeFile(t, filepath.Join(upper, "opaq/new"), "new")
	opaque(t, filepath.Join(upper, "opaq"))
	writeFile(t, filepath.Join(upper, "home/me/.profile"), "PS1='$ '\n")
}

func buildMerged(t *testing.T, dir string) {
	t.Helper()
	buildBase(t, dir)
	writeFile(t, filepath.Join(dir, "etc/passwd"), "root:x:0:0::/root:/bin/sh\nme:x:1000:1000::/home/me:/bin/sh\n")
	for _, p := range []string{"del/me", "deltree", "opaq/one", "opaq/sub"} {
		if err := os.RemoveAll(filepath.Join(dir, p)); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(dir, "opaq/new"), "new")
	writeFile(t, filepath.Join(dir, "home/me/.profile"), "PS1='$ '\n")
}

// commitTestImages commits the base as "base:1" and the changes over it
// as "child:1".
func commitTestImages(t *testing.T, s *Store) (base, child *Image) {
	t.Helper()
	tmp := t.TempDir()
	baseDir, upper := filepath.Join(tmp, "base"), filepath.Join(tmp, "upper")
	buildBase(t, baseDir)
	buildChanges(t, upper)
	base, err := s.Commit(nil, []NewLayer{{Dir: baseDir, CreatedBy: "build base", Comment: "the base"}}, "base:1")
	if err != nil {
		t.Fatal(err)
	}
	child, err = s.Commit(base, []NewLayer{{Dir: upper, Lowers: []string{baseDir}, CreatedBy: "change things", Author: "me"}}, "child:1")
	if err != nil {
		t.Fatal(err)
	}
	return base, child
}

func TestCommit(t *testing.T) {
	s := newStore(t)
	base, child := commitTestImages(t, s)
	if len(child.DiffIDs()) != 2 || child.DiffIDs()[0] != base.DiffIDs()[0] {
		t.Fatalf("child diff_ids %v do not extend the base's %v", child.DiffIDs(), base.DiffIDs())
	}
	if child.Manifest.Layers[0].Digest != base.Manifest.Layers[0].Digest {
		t.Error("the child does not share the base's layer blob")
	}
	if child.Config.Author != "me" || len(child.Config.History) != 2 {
		t.Errorf("child config: author %q, history %v", child.Config.Author, child.Config.History)
	}
	got, err := s.Image("child:1")
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != child.Digest || got.ConfigDigest != child.ConfigDigest {
		t.Errorf("Image(child:1) = %s, want %s", got.Digest, child.Digest)
	}
	// By image ID, as docker prints it, and with sha256:.
	for _, id := range []string{child.ID(), "sha256:" + child.ID(), child.ConfigDigest.Encoded()} {
		if got, err := s.Image(id); err != nil || got.Name != "child:1" {
			t.Errorf("Image(%s) = %v, %v", id, got, err)
		}
	}
	if _, err := s.Image(child.ID()[:8]); !errors.Is(err, ErrNotFound) {
		t.Errorf("Image(8 hex digits) = %v, want ErrNotFound", err)
	}
	imgs, err := s.Images()
	if err != nil || len(imgs) != 2 || imgs[0].Name != "base:1" || imgs[1].Name != "child:1" {
		t.Errorf("Images() = %v, %v", imgs, err)
	}
	h := s.History(child)
	if len(h) != 2 || h[0].CreatedBy != "change things" || h[1].Comment != "the base" || h[1].Layer != base.Manifest.Layers[0].Digest {
		t.Errorf("History = %+v", h)
	}
}

func TestCommitUmociUnpacks(t *testing.T) {
	needRoot(t, "the test image has root-owned files and trusted xattrs")
	needTool(t, "umoci")
	s := newStore(t)
	commitTestImages(t, s)
	bundle := filepath.Join(t.TempDir(), "bundle")
	run(t, "umoci", "unpack", "--image", s.Dir()+":child:1", bundle)
	want := filepath.Join(t.TempDir(), "want")
	buildMerged(t, want)
	if got, want := treeList(t, filepath.Join(bundle, "rootfs")), treeList(t, want); got != want {
		t.Errorf("umoci unpack of the committed image:\n%s\nwant:\n%s", got, want)
	}
}

func TestExport(t *testing.T) {
	needRoot(t, "the test image has root-owned files and trusted xattrs")
	s := newStore(t)
	_, child := commitTestImages(t, s)
	want := filepath.Join(t.TempDir(), "want")
	buildMerged(t, want)
	checkExport(t, s, child, want)
	checkMerged(t, s, child, want)
}

func TestCommitReproducible(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	var digests []string
	for range 2 {
		s := newStore(t)
		_, child := commitTestImages(t, s)
		digests = append(digests, child.Digest.String()+" "+child.DiffIDs()[1].String())
		if !child.Config.Created.Equal(time.Unix(1700000000, 0)) {
			t.Errorf("created %v, want SOURCE_DATE_EPOCH", child.Config.Created)
		}
	}
	if digests[0] != digests[1] {
		t.Errorf("the same changes committed twice: %s and %s", digests[0], digests[1])
	}
}

func TestRemoveKeepsSharedLayers(t *testing.T) {
	s := newStore(t)
	base, child := commitTestImages(t, s)
	if _, err := s.Lowers(child, false); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove("base:1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Image("base:1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("base:1 still there: %v", err)
	}
	// The shared layer and its unpacked directory stay; the base's own
	// config and manifest go.
	if _, err := os.Stat(s.blobPath(base.Manifest.Layers[0].Digest)); err != nil {
		t.Errorf("shared layer blob removed: %v", err)
	}
	if _, err := os.Stat(s.layerPath(base.DiffIDs()[0])); err != nil {
		t.Errorf("shared layer directory removed: %v", err)
	}
	for _, d := range []string{base.Digest.String(), base.ConfigDigest.String()} {
		if _, err := os.Stat(filepath.Join(s.Dir(), "blobs", strings.Replace(d, ":", "/", 1))); !os.IsNotExist(err) {
			t.Errorf("base blob %s kept: %v", d, err)
		}
	}
	// A layer an image mount uses stays too.
	writeFile(t, filepath.Join(s.Dir(), containersDir, "c1", "layers"), child.DiffIDs()[1].String()+"\n")
	if err := s.Remove(child.ID()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.layerPath(child.DiffIDs()[1])); err != nil {
		t.Errorf("layer of a mount removed: %v", err)
	}
	if _, err := os.Stat(s.layerPath(child.DiffIDs()[0])); !os.IsNotExist(err) {
		t.Errorf("unused layer directory kept: %v", err)
	}
	blobs, _ := os.ReadDir(filepath.Join(s.Dir(), "blobs", "sha256"))
	if len(blobs) != 0 {
		t.Errorf("%d blobs left after removing every image", len(blobs))
	}
	if err := s.Remove("child:1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Remove(removed) = %v, want ErrNotFound", err)
	}
}

func TestRemoveByIDWithSeveralTags(t *testing.T) {
	s := newStore(t)
	_, child := commitTestImages(t, s)
	var buf bytes.Buffer
	if err := s.Save([]string{"child:1"}, &buf); err != nil {
		t.Fatal(err)
	}
	tagAs(t, s, child, "other:2")
	if err := s.Remove(child.ID()); err == nil || !strings.Contains(err.Error(), "remove it by name") {
		t.Errorf("Remove(ID of an image with two tags) = %v", err)
	}
	if err := s.Remove("other:2"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Lowers(mustImage(t, s, "child:1"), false); err != nil {
		t.Errorf("child:1 broken after untagging its other name: %v", err)
	}
}

// tagAs gives img another name.
func tagAs(t *testing.T, s *Store, img *Image, name string) {
	t.Helper()
	tx, err := s.begin()
	if err != nil {
		t.Fatal(err)
	}
	defer tx.close()
	fi, err := os.Stat(s.blobPath(img.Digest))
	if err != nil {
		t.Fatal(err)
	}
	err = tx.publish(nil, func(idx *v1.Index) error {
		tagImage(idx, name, v1.Descriptor{MediaType: v1.MediaTypeImageManifest, Digest: img.Digest, Size: fi.Size()})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func mustImage(t *testing.T, s *Store, name string) *Image {
	t.Helper()
	img, err := s.Image(name)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func TestLowersUnpacksFromBlobs(t *testing.T) {
	s := newStore(t)
	_, child := commitTestImages(t, s)
	dirs, err := s.Lowers(child, os.Geteuid() != 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) != 2 || dirs[0] != s.layerPath(child.DiffIDs()[1]) || dirs[1] != s.layerPath(child.DiffIDs()[0]) {
		t.Fatalf("Lowers = %v, want top-most first", dirs)
	}
	if _, err := os.Stat(filepath.Join(dirs[1], "bin/tool")); err != nil {
		t.Error(err)
	}
	// A corrupt blob is refused and nothing is unpacked.
	if err := s.removeLayerDir(child.DiffIDs()[1]); err != nil {
		t.Fatal(err)
	}
	p := s.blobPath(child.Manifest.Layers[1].Digest)
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 1
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Lowers(child, false); err == nil {
		t.Error("Lowers unpacked a corrupt blob")
	}
	if _, err := os.Stat(s.layerPath(child.DiffIDs()[1])); !os.IsNotExist(err) {
		t.Errorf("corrupt layer unpacked: %v", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(s.Dir(), stagingDir)); len(ents) != 0 {
		t.Errorf("staging not cleaned: %v", ents)
	}
}

func TestAdoptLayer(t *testing.T) {
	s := newStore(t)
	upper := filepath.Join(s.Dir(), "upper-to-adopt")
	writeFile(t, filepath.Join(upper, "etc/hello"), "hi\n")
	img, err := s.Commit(nil, []NewLayer{{Dir: upper}}, "adopted")
	if err != nil {
		t.Fatal(err)
	}
	id := img.DiffIDs()[0]
	if ok, err := s.AdoptLayer(id, upper); err != nil || !ok {
		t.Fatalf("AdoptLayer = %v, %v", ok, err)
	}
	if _, err := os.Stat(upper); !os.IsNotExist(err) {
		t.Errorf("adopted directory still at its old path: %v", err)
	}
	lowers, err := s.Lowers(img, false)
	if err != nil || len(lowers) != 1 {
		t.Fatal(lowers, err)
	}
	if data, err := os.ReadFile(filepath.Join(lowers[0], "etc/hello")); err != nil || string(data) != "hi\n" {
		t.Errorf("adopted layer: %q, %v", data, err)
	}
	// A second directory for the same layer is not taken.
	other := filepath.Join(s.Dir(), "other")
	writeFile(t, filepath.Join(other, "etc/hello"), "hi\n")
	if ok, err := s.AdoptLayer(id, other); err != nil || ok {
		t.Errorf("AdoptLayer of a layer the store has = %v, %v", ok, err)
	}
}
