package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// refs is what the index and the image mounts reference.
type refs struct {
	blobs  map[digest.Digest]bool
	layers map[digest.Digest]bool
}

// references collects every blob reachable from index.json and every
// layer an image or a mount (containers/*/layers) uses. Unreadable blobs
// are skipped: what they would reference cannot be known, and a blob that
// cannot be read references nothing that could be read through it.
func (s *Store) references() (*refs, error) {
	idx, err := s.readIndex()
	if err != nil {
		return nil, err
	}
	r := &refs{blobs: map[digest.Digest]bool{}, layers: map[digest.Digest]bool{}}
	for _, d := range idx.Manifests {
		s.markDescriptor(r, d, 0)
	}
	mounts, err := s.mountedLayers()
	if err != nil {
		return nil, err
	}
	for _, d := range mounts {
		r.layers[d] = true
	}
	return r, nil
}

// markDescriptor marks d and what it references.
func (s *Store) markDescriptor(r *refs, d v1.Descriptor, depth int) {
	if r.blobs[d.Digest] || depth > 4 {
		return
	}
	r.blobs[d.Digest] = true
	switch d.MediaType {
	case v1.MediaTypeImageIndex, mediaTypeDockerManifestList:
		var idx v1.Index
		if s.readBlobJSON(d, &idx) == nil {
			for _, c := range idx.Manifests {
				s.markDescriptor(r, c, depth+1)
			}
		}
	case v1.MediaTypeImageManifest, mediaTypeDockerManifest:
		var m v1.Manifest
		if s.readBlobJSON(d, &m) != nil {
			return
		}
		r.blobs[m.Config.Digest] = true
		for _, l := range m.Layers {
			r.blobs[l.Digest] = true
		}
		var c v1.Image
		if s.readBlobJSON(m.Config, &c) == nil {
			for _, id := range c.RootFS.DiffIDs {
				r.layers[id] = true
			}
		}
	}
}

// mountedLayers reads the diff_ids listed in containers/*/layers, the
// layers of the image mounts.
func (s *Store) mountedLayers() ([]digest.Digest, error) {
	files, err := filepath.Glob(s.path(containersDir, "*", "layers"))
	if err != nil {
		return nil, err
	}
	var ds []digest.Digest
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			return nil, fmt.Errorf("read %s: %w", f, err)
		}
		for _, line := range strings.Fields(string(data)) {
			if !strings.Contains(line, ":") {
				line = "sha256:" + line
			}
			if d, err := digest.Parse(line); err == nil {
				ds = append(ds, d)
			}
		}
	}
	return ds, nil
}

// Remove untags the image called name, then deletes its blobs and
// unpacked layers that no other image (and no image mount) uses. Given an
// image ID, it removes the image's only tag, and refuses an image with
// several.
func (s *Store) Remove(name string) error {
	img, err := s.Image(name)
	if err != nil {
		return err
	}
	if norm, err := NormalizeName(name); err != nil || norm != img.Name {
		// Named by ID: docker refuses to untag several names at once.
		imgs, err := s.Images()
		if err != nil {
			return err
		}
		var names []string
		for _, o := range imgs {
			if o.ConfigDigest == img.ConfigDigest {
				names = append(names, o.Name)
			}
		}
		if len(names) > 1 {
			return fmt.Errorf("image %s is tagged %s: remove it by name", name, strings.Join(names, ", "))
		}
	}
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	idx, err := s.readIndex()
	if err != nil {
		return err
	}
	// What the removed tag referenced: the candidates for deletion.
	gone := &refs{blobs: map[digest.Digest]bool{}, layers: map[digest.Digest]bool{}}
	var keep []v1.Descriptor
	for _, d := range idx.Manifests {
		if n, ok := refName(d); ok && n == img.Name {
			s.markDescriptor(gone, d, 0)
			continue
		}
		keep = append(keep, d)
	}
	if len(keep) == len(idx.Manifests) {
		return fmt.Errorf("%w: %s (removed meanwhile)", ErrNotFound, name)
	}
	idx.Manifests = keep
	if err := s.writeIndex(idx); err != nil {
		return err
	}
	// The index no longer names the image; what follows only frees space.
	// Only the removed image's own blobs are candidates: blobs nothing
	// references may belong to a writer that has not yet updated the index
	// (skopeo, or a transaction of ours).
	used, err := s.references()
	if err != nil {
		return fmt.Errorf("untagged %s, but cannot collect its blobs: %w", img.Name, err)
	}
	for _, d := range sortedDigests(gone.blobs) {
		if used.blobs[d] || checkDigest(d) != nil {
			continue
		}
		if err := os.Remove(s.blobPath(d)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("untagged %s, but: remove blob %s: %w", img.Name, d, err)
		}
	}
	for _, d := range sortedDigests(gone.layers) {
		if used.layers[d] || checkDigest(d) != nil {
			continue
		}
		if err := s.removeLayerDir(d); err != nil {
			return fmt.Errorf("untagged %s, but: %w", img.Name, err)
		}
	}
	return syncDir(s.path(v1.ImageBlobsDir, "sha256"))
}

func sortedDigests(m map[digest.Digest]bool) []digest.Digest {
	ds := make([]digest.Digest, 0, len(m))
	for d := range m {
		ds = append(ds, d)
	}
	slices.Sort(ds)
	return ds
}
