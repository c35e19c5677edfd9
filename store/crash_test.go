package store

import (
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

func TestOpenRecoversDeadTransactions(t *testing.T) {
	s := newStore(t)
	_, child := commitTestImages(t, s)
	if _, err := s.Lowers(child, false); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, s.Dir())

	// A transaction killed between moving its blobs and layers into
	// place and updating the index: what it moved goes, what an image
	// references (here: a blob it shares) stays.
	orphan := []byte("an orphan blob")
	orphanDigest := digest.FromBytes(orphan)
	writeFile(t, s.blobPath(orphanDigest), string(orphan))
	orphanLayer := digest.FromString("an orphan layer")
	writeFile(t, filepath.Join(s.layerPath(orphanLayer), "file"), "x")
	dead := filepath.Join(s.Dir(), stagingDir, "txn-dead")
	writeFile(t, filepath.Join(dead, "blob-1"), "half a blob")
	writeFile(t, filepath.Join(dead, lockFile), "")
	writeFile(t, filepath.Join(dead, journalFile), fmt.Sprintf("blob %s\nlayer %s\nblob %s\nlayer %s\n",
		orphanDigest, orphanLayer, child.Manifest.Layers[0].Digest, child.DiffIDs()[0]))
	// A live transaction of this process: left alone.
	live, err := s.begin()
	if err != nil {
		t.Fatal(err)
	}
	defer live.close()

	if _, err := Open(s.Dir()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(live.dir); err != nil {
		t.Errorf("Open removed a live transaction: %v", err)
	}
	live.close()
	if after := snapshot(t, s.Dir()); after != before {
		t.Errorf("after recovery:\n%s\nwant:\n%s", after, before)
	}
}

// TestKillDuringLoad kills a process loading an archive, or committing,
// at different moments: whenever it dies, the store, once opened again,
// is either as it was or has the complete image.
func TestKillDuringLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("slow")
	}
	tmp := t.TempDir()
	// Three layers of incompressible data, so the work takes a while.
	src := newStore(t)
	var layers []NewLayer
	for i := range 3 {
		dir := filepath.Join(tmp, fmt.Sprintf("layer%d", i))
		data := make([]byte, 8<<20)
		if _, err := rand.Read(data); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, fmt.Sprintf("f%d", i)), string(data))
		layers = append(layers, NewLayer{Dir: dir})
	}
	if _, err := src.Commit(nil, layers, "big:1"); err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(tmp, "big.tar")
	f, err := os.Create(archive)
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Save([]string{"big:1"}, f); err != nil {
		t.Fatal(err)
	}
	f.Close()

	for _, mode := range []string{"load", "commit"} {
		for _, delay := range []time.Duration{0, 5, 20, 50, 100, 200, 400, 800} {
			delay *= time.Millisecond
			t.Run(fmt.Sprintf("%s after %v", mode, delay), func(t *testing.T) {
				s := newStore(t)
				commitTestImages(t, s)
				before := snapshot(t, s.Dir())
				cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
				arg := archive
				if mode == "commit" {
					arg = strings.Join([]string{layers[0].Dir, layers[1].Dir, layers[2].Dir}, ":")
				}
				cmd.Env = append(os.Environ(), "STORE_HELPER="+mode, "STORE_HELPER_STORE="+s.Dir(), "STORE_HELPER_ARG="+arg)
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				time.Sleep(delay)
				_ = cmd.Process.Signal(syscall.SIGKILL)
				_ = cmd.Wait()
				staged, _ := os.ReadDir(filepath.Join(s.Dir(), stagingDir))
				s2, err := Open(s.Dir())
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("killed with %d transaction(s) under way", len(staged))
				if _, err := s2.Image("big:1"); err != nil {
					if after := snapshot(t, s.Dir()); after != before {
						t.Errorf("killed before the end, the store changed:\n%s\nwas:\n%s", after, before)
					}
					return
				}
				t.Log("the image was complete")
				checkConsistent(t, s2)
			})
		}
	}
}

// TestHelperProcess is the process TestKillDuringLoad kills.
func TestHelperProcess(t *testing.T) {
	mode := os.Getenv("STORE_HELPER")
	if mode == "" {
		t.Skip("run by TestKillDuringLoad")
	}
	s, err := Open(os.Getenv("STORE_HELPER_STORE"))
	if err != nil {
		t.Fatal(err)
	}
	arg := os.Getenv("STORE_HELPER_ARG")
	switch mode {
	case "load":
		f, err := os.Open(arg)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := s.Load(f, nil); err != nil {
			t.Fatal(err)
		}
	case "commit":
		var layers []NewLayer
		for _, d := range strings.Split(arg, ":") {
			layers = append(layers, NewLayer{Dir: d})
		}
		if _, err := s.Commit(nil, layers, "big:1"); err != nil {
			t.Fatal(err)
		}
	}
}

// checkConsistent checks a store: every blob has the digest it is named
// after, every tag's manifest, config and layers are there, every
// unpacked layer belongs to an image, and staging is empty.
func checkConsistent(t *testing.T, s *Store) {
	t.Helper()
	blobs, err := os.ReadDir(filepath.Join(s.Dir(), "blobs", "sha256"))
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range blobs {
		data, err := os.ReadFile(filepath.Join(s.Dir(), "blobs", "sha256", b.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprintf("%x", sha256.Sum256(data)); got != b.Name() {
			t.Errorf("blob %s has digest %s", b.Name(), got)
		}
	}
	imgs, err := s.Images()
	if err != nil {
		t.Fatal(err)
	}
	used := map[string]bool{}
	for _, img := range imgs {
		for _, l := range img.Manifest.Layers {
			if _, err := os.Stat(s.blobPath(l.Digest)); err != nil {
				t.Errorf("image %s: %v", img.Name, err)
			}
		}
		for _, id := range img.DiffIDs() {
			used[id.Encoded()] = true
		}
	}
	dirs, _ := os.ReadDir(filepath.Join(s.Dir(), layersDir))
	for _, d := range dirs {
		if !used[d.Name()] {
			t.Errorf("unpacked layer %s belongs to no image", d.Name())
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(s.Dir(), stagingDir)); len(ents) != 0 {
		t.Errorf("staging not empty: %v", ents)
	}
}
