package store

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// umociImage builds with umoci the OCI layout of layers.md §8.1: three
// layers with files, hard links, a symlink, a capability, then deletions
// (explicit whiteouts), an opaque directory (umoci insert --opaque) and a
// whiteout of a symlink. It returns the layout, the tag, and the tree
// umoci itself unpacks from it.
func umociImage(t *testing.T) (layout, tag, rootfs string) {
	t.Helper()
	needRoot(t, "umoci unpacks owners, devices and trusted xattrs only as root")
	needTool(t, "umoci")
	tmp := t.TempDir()
	layout = filepath.Join(tmp, "img")
	run(t, "umoci", "init", "--layout", layout)
	run(t, "umoci", "new", "--image", layout+":base")
	b1 := filepath.Join(tmp, "b1")
	run(t, "umoci", "unpack", "--image", layout+":base", b1)
	r := filepath.Join(b1, "rootfs")
	writeFile(t, filepath.Join(r, "etc/app-config"), "config\n")
	writeFile(t, filepath.Join(r, "etc/keep"), "keep\n")
	writeFile(t, filepath.Join(r, "bin/tool"), "#!/bin/sh\n")
	if err := os.Link(filepath.Join(r, "bin/tool"), filepath.Join(r, "bin/tool-link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("tool", filepath.Join(r, "bin/tool-symlink")); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(r, "opaq/one"), "1")
	writeFile(t, filepath.Join(r, "opaq/sub/two"), "2")
	writeFile(t, filepath.Join(r, "a/b/c/bar"), "bar")
	writeFile(t, filepath.Join(r, "big/file"), strings.Repeat("0123456789abcdef", 1<<14))
	if err := os.Chown(filepath.Join(r, "etc/keep"), 3000000, 3000000); err != nil {
		t.Fatal(err)
	}
	run(t, "setcap", "cap_net_raw+ep", filepath.Join(r, "bin/tool"))
	run(t, "umoci", "repack", "--image", layout+":layer1", b1)

	b2 := filepath.Join(tmp, "b2")
	run(t, "umoci", "unpack", "--image", layout+":layer1", b2)
	r = filepath.Join(b2, "rootfs")
	for _, p := range []string{"etc/app-config", "opaq/one", "opaq/sub", "a/b/c/bar"} {
		if err := os.RemoveAll(filepath.Join(r, p)); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(r, "opaq/new"), "new")
	run(t, "umoci", "repack", "--image", layout+":layer2", b2)

	src := filepath.Join(tmp, "etc-src")
	writeFile(t, filepath.Join(src, "only"), "only this in /etc\n")
	run(t, "umoci", "insert", "--image", layout+":layer2", "--tag", "layer3", "--opaque", src, "/etc")
	run(t, "umoci", "insert", "--image", layout+":layer3", "--tag", "layer4", "--whiteout", "/bin/tool-symlink")

	b3 := filepath.Join(tmp, "b3")
	run(t, "umoci", "unpack", "--image", layout+":layer4", b3)
	return layout, "layer4", filepath.Join(b3, "rootfs")
}

// checkLoaded checks that the loaded image unpacks to the tree want.
// loadArchive loads the archive into a new store and checks that it holds
// exactly the image name, with the tree want (see checkLoaded).
func loadArchive(t *testing.T, archive, name, want string) {
	t.Helper()
	s := newStore(t)
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	imgs, err := s.Load(f, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(imgs) != 1 || imgs[0].Name != name {
		t.Fatalf("loaded %v, want %s", imgs, name)
	}
	checkLoaded(t, s, name, want)
}

func checkLoaded(t *testing.T, s *Store, name, want string) {
	t.Helper()
	img, err := s.Image(name)
	if err != nil {
		t.Fatal(err)
	}
	lowers, err := s.Lowers(img, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(lowers) != len(img.Manifest.Layers) {
		t.Fatalf("%d lowers for %d layers", len(lowers), len(img.Manifest.Layers))
	}
	checkMerged(t, s, img, want)
	checkExport(t, s, img, want)
}

func TestLoadLayoutUmoci(t *testing.T) {
	layout, tag, rootfs := umociImage(t)
	s := newStore(t)
	imgs, err := s.LoadLayout(layout)
	if err != nil {
		t.Fatal(err)
	}
	// Every tag of the layout: base, layer1..layer4.
	if len(imgs) != 5 {
		t.Errorf("loaded %d images, want 5", len(imgs))
	}
	checkLoaded(t, s, tag, rootfs)
	// Loading again changes nothing.
	before := snapshot(t, s.Dir())
	if _, err := s.LoadLayout(layout); err != nil {
		t.Fatal(err)
	}
	if after := snapshot(t, s.Dir()); after != before {
		t.Errorf("loading the same layout twice changed the store")
	}
}

func TestLoadDockerArchiveFromSkopeo(t *testing.T) {
	layout, tag, rootfs := umociImage(t)
	needTool(t, "skopeo")
	archive := filepath.Join(t.TempDir(), "x.tar")
	run(t, "skopeo", "copy", "-q", "oci:"+layout+":"+tag, "docker-archive:"+archive+":demo/l4:v1")
	// skopeo writes layer.tar symlinks (layers.md §6.2).
	// Without them the test would not show that Load follows them.
	if out := run(t, "tar", "-tvf", archive); !strings.Contains(out, "layer.tar -> ") {
		t.Fatalf("no layer.tar symlinks in skopeo's archive:\n%s", out)
	}
	loadArchive(t, archive, "demo/l4:v1", rootfs)
}

func TestLoadOCIArchive(t *testing.T) {
	layout, tag, rootfs := umociImage(t)
	needTool(t, "skopeo")
	archive := filepath.Join(t.TempDir(), "x.tar")
	run(t, "skopeo", "copy", "-q", "oci:"+layout+":"+tag, "oci-archive:"+archive+":myimg:2.0")
	loadArchive(t, archive, "myimg:2.0", rootfs)
}

// TestSkopeoCopyIntoStore checks the store as a skopeo destination: an
// image copied in mounts (Lowers unpacks it) like a loaded one.
func TestSkopeoCopyIntoStore(t *testing.T) {
	layout, tag, rootfs := umociImage(t)
	needTool(t, "skopeo")
	s := newStore(t)
	// skopeo splits oci:DIR:REF at the first colon after DIR, so the
	// reference may hold a tag: the store's name is "copied:1".
	run(t, "skopeo", "copy", "-q", "oci:"+layout+":"+tag, "oci:"+s.Dir()+":copied:1")
	checkLoaded(t, s, "copied:1", rootfs)
	// And a name without a tag is the name with :latest.
	run(t, "skopeo", "copy", "-q", "oci:"+layout+":"+tag, "oci:"+s.Dir()+":plain")
	if _, err := s.Image("plain:latest"); err != nil {
		t.Error(err)
	}
}

func TestSkopeoCopyFromStore(t *testing.T) {
	needTool(t, "skopeo")
	s := newStore(t)
	commitTestImages(t, s)
	tmp := t.TempDir()
	run(t, "skopeo", "copy", "-q", "oci:"+s.Dir()+":child:1", "oci:"+filepath.Join(tmp, "other")+":x")
	run(t, "skopeo", "copy", "-q", "oci:"+s.Dir()+":child:1", "docker-archive:"+filepath.Join(tmp, "d.tar")+":child:1")
	if os.Geteuid() == 0 {
		cs := filepath.Join(tmp, "cs")
		run(t, "skopeo", "copy", "-q", "oci:"+s.Dir()+":child:1", "containers-storage:[vfs@"+cs+"/root+"+cs+"/run]localhost/child:1")
		t.Cleanup(func() { os.RemoveAll(cs) })
	}
}

func TestSave(t *testing.T) {
	needTool(t, "skopeo")
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	s := newStore(t)
	commitTestImages(t, s)
	tmp := t.TempDir()
	var saves [2]bytes.Buffer
	for i := range saves {
		if err := s.Save([]string{"child:1", "base:1"}, &saves[i]); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(saves[0].Bytes(), saves[1].Bytes()) {
		t.Fatal("saving twice gave different bytes")
	}
	names := tarEntries(t, bytes.NewReader(saves[0].Bytes()))
	if names[0] != "blobs/" || names[len(names)-1] != "oci-layout" {
		t.Errorf("entries not sorted: %v", names)
	}
	archive := filepath.Join(tmp, "save.tar")
	if err := os.WriteFile(archive, saves[0].Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	// Both a docker archive and an OCI archive.
	run(t, "skopeo", "copy", "-q", "docker-archive:"+archive+":child:1", "oci:"+filepath.Join(tmp, "from-docker")+":x")
	run(t, "skopeo", "copy", "-q", "oci-archive:"+archive+":child:1", "oci:"+filepath.Join(tmp, "from-oci")+":x")
	run(t, "skopeo", "copy", "-q", "docker-archive:"+archive+":base:1", "oci:"+filepath.Join(tmp, "from-docker")+":b")
	if _, err := os.Stat("/usr/bin/umoci"); err == nil && os.Geteuid() == 0 {
		extracted := filepath.Join(tmp, "extracted")
		extractTar(t, archive, extracted)
		run(t, "umoci", "unpack", "--image", extracted+":child:1", filepath.Join(tmp, "bundle"))
		want := filepath.Join(tmp, "want")
		buildMerged(t, want)
		if got, want := treeList(t, filepath.Join(tmp, "bundle", "rootfs")), treeList(t, want); got != want {
			t.Errorf("umoci unpack of the saved image:\n%s\nwant:\n%s", got, want)
		}
	}
	// And our own Load reads it back, names included.
	s2 := newStore(t)
	imgs, err := s2.Load(bytes.NewReader(saves[0].Bytes()), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(imgs) != 2 || imgs[0].Name != "child:1" || imgs[1].Name != "base:1" {
		t.Errorf("loaded %v", imgs)
	}
	orig, _ := s.Image("child:1")
	if imgs[0].Digest != orig.Digest {
		t.Errorf("manifest digest changed by save and load: %s, was %s", imgs[0].Digest, orig.Digest)
	}
}
