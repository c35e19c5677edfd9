package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strings"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

var specsVersioned = specs.Versioned{SchemaVersion: 2}

// Docker's media types, which OCI layouts written by skopeo and docker
// archives may carry (docker image-spec v2.2).
const (
	mediaTypeDockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	mediaTypeDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
	mediaTypeDockerConfig       = "application/vnd.docker.container.image.v1+json"
	mediaTypeDockerLayerGzip    = "application/vnd.docker.image.rootfs.diff.tar.gzip"
	mediaTypeDockerForeignGzip  = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
	mediaTypeDockerLayer        = "application/vnd.docker.image.rootfs.diff.tar"
)

// annotationContainerdName is the full image name containerd and docker
// >= 25 put on the index descriptors of an archive.
const annotationContainerdName = "io.containerd.image.name"

// ErrNotFound is returned (wrapped) for a name or ID no image has.
var ErrNotFound = errors.New("no such image")

// Image is one tagged image of the store.
type Image struct {
	// Name is the normalized name, "alpine:3.20".
	Name string
	// Digest is the digest of the manifest.
	Digest digest.Digest
	// Manifest is the image manifest, Config the image config, stored
	// under ConfigDigest (the image ID).
	Manifest     v1.Manifest
	Config       v1.Image
	ConfigDigest digest.Digest
}

// ID returns the image ID as docker shows it: the first 12 hex digits of
// the config digest.
func (img *Image) ID() string { return shortID(img.ConfigDigest) }

// Size returns the image's content size: its config and layer blobs as
// stored (compressed).
func (img *Image) Size() int64 {
	n := img.Manifest.Config.Size
	for _, l := range img.Manifest.Layers {
		n += l.Size
	}
	return n
}

// DiffIDs returns the image's layers, bottom first.
func (img *Image) DiffIDs() []digest.Digest { return img.Config.RootFS.DiffIDs }

func shortID(d digest.Digest) string {
	e := d.Encoded()
	if len(e) > 12 {
		e = e[:12]
	}
	return e
}

// readIndex reads the store's index.json.
func (s *Store) readIndex() (*v1.Index, error) {
	var idx v1.Index
	if err := readJSON(s.path(v1.ImageIndexFile), &idx); err != nil {
		return nil, fmt.Errorf("read %s: %w", v1.ImageIndexFile, err)
	}
	if idx.SchemaVersion != 2 {
		return nil, fmt.Errorf("%s: schemaVersion %d, want 2", v1.ImageIndexFile, idx.SchemaVersion)
	}
	return &idx, nil
}

// writeIndex replaces index.json.
//
// Preconditions: the store lock is held.
func (s *Store) writeIndex(idx *v1.Index) error {
	idx.Versioned = specsVersioned
	idx.MediaType = v1.MediaTypeImageIndex
	if idx.Manifests == nil {
		idx.Manifests = []v1.Descriptor{}
	}
	data, err := json.Marshal(idx)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(s.path(v1.ImageIndexFile), data); err != nil {
		return fmt.Errorf("write %s: %w", v1.ImageIndexFile, err)
	}
	return nil
}

// refName returns the normalized name of an index descriptor, false for an
// untagged or unreadable one.
func refName(d v1.Descriptor) (string, bool) {
	n := d.Annotations[v1.AnnotationRefName]
	if n == "" {
		return "", false
	}
	norm, err := NormalizeName(n)
	if err != nil {
		return "", false
	}
	return norm, true
}

// Images returns the store's tagged images, sorted by name. An image whose
// manifest or config cannot be read is left out, with a warning.
func (s *Store) Images() ([]*Image, error) {
	byName, err := s.tags()
	if err != nil {
		return nil, err
	}
	var imgs []*Image
	for n, d := range byName {
		img, err := s.loadImage(n, d)
		if err != nil {
			if s.Warn != nil {
				s.Warn(fmt.Sprintf("image %s: %v", n, err))
			}
			continue
		}
		imgs = append(imgs, img)
	}
	sort.Slice(imgs, func(i, j int) bool { return imgs[i].Name < imgs[j].Name })
	return imgs, nil
}

// tags maps the normalized names of index.json to their descriptors.
func (s *Store) tags() (map[string]v1.Descriptor, error) {
	idx, err := s.readIndex()
	if err != nil {
		return nil, err
	}
	byName := map[string]v1.Descriptor{}
	for _, d := range idx.Manifests {
		// A later descriptor wins, as skopeo appends.
		if n, ok := refName(d); ok {
			byName[n] = d
		}
	}
	return byName, nil
}

// Image returns the image called name ("alpine", "alpine:3.20"), or the
// one whose config (image ID) or manifest digest starts with name, given
// as at least 12 hex digits with or without "sha256:".
func (s *Store) Image(name string) (*Image, error) {
	byName, err := s.tags()
	if err != nil {
		return nil, err
	}
	if norm, err := NormalizeName(name); err == nil {
		if d, ok := byName[norm]; ok {
			img, err := s.loadImage(norm, d)
			if err != nil {
				return nil, fmt.Errorf("image %s: %w", norm, err)
			}
			return img, nil
		}
	}
	if prefix, ok := idPrefix(name); ok {
		imgs, err := s.Images()
		if err != nil {
			return nil, err
		}
		var found *Image
		for _, img := range imgs {
			if !strings.HasPrefix(img.ConfigDigest.Encoded(), prefix) && !strings.HasPrefix(img.Digest.Encoded(), prefix) {
				continue
			}
			if found != nil && found.ConfigDigest != img.ConfigDigest {
				return nil, fmt.Errorf("image ID %s is ambiguous: %s and %s", name, found.Name, img.Name)
			}
			if found == nil {
				found = img
			}
		}
		if found != nil {
			return found, nil
		}
	}
	return nil, fmt.Errorf("%w: %s", ErrNotFound, name)
}

// idPrefix returns the hex digits of an image ID prefix.
func idPrefix(s string) (string, bool) {
	s = strings.TrimPrefix(s, "sha256:")
	if len(s) < 12 || len(s) > 64 {
		return "", false
	}
	for _, c := range s {
		if !strings.ContainsRune("0123456789abcdef", c) {
			return "", false
		}
	}
	return s, true
}

// loadImage reads the manifest and config of the index descriptor d, going
// through an image index to the manifest for this platform.
func (s *Store) loadImage(name string, d v1.Descriptor) (*Image, error) {
	md, err := s.resolveManifest(d)
	if err != nil {
		return nil, err
	}
	var m v1.Manifest
	if err := s.readBlobJSON(md, &m); err != nil {
		return nil, err
	}
	var c v1.Image
	if err := s.readBlobJSON(m.Config, &c); err != nil {
		return nil, err
	}
	return &Image{Name: name, Digest: md.Digest, Manifest: m, Config: c, ConfigDigest: m.Config.Digest}, nil
}

// resolveManifest returns d if it is a manifest, or the manifest for this
// platform if d is an image index.
func (s *Store) resolveManifest(d v1.Descriptor) (v1.Descriptor, error) {
	return resolveIndex(d, s.readBlobJSON)
}

// resolveIndex returns d if it is a manifest, or, going through image
// indexes read with readJSON, the manifest for this platform.
func resolveIndex(d v1.Descriptor, readJSON func(v1.Descriptor, any) error) (v1.Descriptor, error) {
	for range 4 {
		switch d.MediaType {
		case v1.MediaTypeImageManifest, mediaTypeDockerManifest:
			return d, nil
		case v1.MediaTypeImageIndex, mediaTypeDockerManifestList:
			var idx v1.Index
			if err := readJSON(d, &idx); err != nil {
				return d, err
			}
			next, err := pickPlatform(idx.Manifests)
			if err != nil {
				return d, fmt.Errorf("index %s: %w", d.Digest, err)
			}
			d = next
		default:
			return d, fmt.Errorf("descriptor %s: unsupported media type %q", d.Digest, d.MediaType)
		}
	}
	return d, fmt.Errorf("descriptor %s: image indexes nested too deep", d.Digest)
}

// pickPlatform chooses among an image index's manifests the one for
// linux on this machine's architecture.
func pickPlatform(ms []v1.Descriptor) (v1.Descriptor, error) {
	for _, m := range ms {
		p := m.Platform
		if p == nil || p.OS == "linux" && p.Architecture == runtime.GOARCH {
			return m, nil
		}
	}
	return v1.Descriptor{}, fmt.Errorf("no manifest for linux/%s", runtime.GOARCH)
}

// readBlobJSON decodes the blob of d, checking its size and digest.
func (s *Store) readBlobJSON(d v1.Descriptor, v any) error {
	data, err := s.readBlob(d)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("blob %s: %w", d.Digest, err)
	}
	return nil
}

// readBlob returns the bytes of a small blob, checking its size and
// digest.
func (s *Store) readBlob(d v1.Descriptor) ([]byte, error) {
	if err := checkDigest(d.Digest); err != nil {
		return nil, err
	}
	if d.Size < 0 || d.Size > maxJSON {
		return nil, fmt.Errorf("blob %s: size %d out of range", d.Digest, d.Size)
	}
	data, err := os.ReadFile(s.blobPath(d.Digest))
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", d.Digest, err)
	}
	if int64(len(data)) != d.Size {
		return nil, fmt.Errorf("blob %s: size %d, descriptor says %d", d.Digest, len(data), d.Size)
	}
	if got := d.Digest.Algorithm().FromBytes(data); got != d.Digest {
		return nil, fmt.Errorf("blob %s: content has digest %s", d.Digest, got)
	}
	return data, nil
}

// checkDigest accepts the sha256 digests the store keeps.
func checkDigest(d digest.Digest) error {
	if d.Algorithm() != digest.SHA256 {
		return fmt.Errorf("digest %q: only sha256 digests are supported", d)
	}
	if err := d.Validate(); err != nil {
		return fmt.Errorf("digest %q: %w", d, err)
	}
	return nil
}
