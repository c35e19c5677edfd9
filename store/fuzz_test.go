package store

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// FuzzLoad feeds archives to Load: it must never panic, and an archive it
// refuses must leave the store as it was.
//
//	go test -fuzz FuzzLoad ./store/
func FuzzLoad(f *testing.F) {
	f.Add(tarBytes(f, ociEntries(f, testLayer(f), nil)))
	f.Add(tarBytes(f, dockerEntries(f, testLayer(f), nil)))
	for _, tc := range hostileArchives(f) {
		if len(tc.data) < 1<<20 {
			f.Add(tc.data)
		}
	}
	// One store for every input: opening one costs more syncs than a
	// load, and refusals must leave it unchanged anyway.
	s, err := Open(filepath.Join(f.TempDir(), "store"))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		before := snapshot(t, s.Dir())
		imgs, err := s.Load(bytes.NewReader(data), nil)
		if err != nil {
			if after := snapshot(t, s.Dir()); after != before {
				t.Fatalf("refused (%v) but the store changed:\n%s\nwas:\n%s", err, after, before)
			}
			return
		}
		for _, img := range imgs {
			if _, err := s.Image(img.Name); err != nil {
				t.Fatalf("loaded %s but cannot find it: %v", img.Name, err)
			}
		}
		if ents, _ := os.ReadDir(filepath.Join(s.Dir(), stagingDir)); len(ents) != 0 {
			t.Fatalf("staging not empty after a load: %v", ents)
		}
	})
}
