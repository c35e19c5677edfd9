package store

import (
	"compress/gzip"
	"crypto/sha256"
	"fmt"
	"hash"
	"io"
	"os"
	"strings"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/unionmount/unionmount/layer"
)

// Lowers returns the unpacked layer directories of img, top-most first, as
// a mount takes its lowers. Layers not yet unpacked are unpacked from their
// blobs, verifying digest, size and diff_id, so an image that skopeo copied
// into the store mounts too. userXattr marks opaque directories with
// user.overlay.opaque (for an unprivileged mount) instead of
// trusted.overlay.opaque; cow reads both.
func (s *Store) Lowers(img *Image, userXattr bool) ([]string, error) {
	if err := checkImage(&img.Manifest, &img.Config); err != nil {
		return nil, fmt.Errorf("image %s: %w", img.Name, err)
	}
	diffIDs := img.Config.RootFS.DiffIDs
	var t *txn
	defer func() {
		if t != nil {
			t.close()
		}
	}()
	for i, id := range diffIDs {
		if _, err := os.Lstat(s.layerPath(id)); err == nil {
			continue
		}
		if t == nil {
			var err error
			if t, err = s.begin(); err != nil {
				return nil, err
			}
		}
		if _, ok := t.layers[id]; ok {
			continue
		}
		if err := t.unpackLayer(img.Manifest.Layers[i], id, userXattr); err != nil {
			return nil, fmt.Errorf("image %s: layer %d: %w", img.Name, i+1, err)
		}
	}
	if t != nil {
		if err := t.publish(nil, nil); err != nil {
			return nil, fmt.Errorf("image %s: %w", img.Name, err)
		}
	}
	dirs := make([]string, len(diffIDs))
	for i, id := range diffIDs {
		dirs[len(diffIDs)-1-i] = s.layerPath(id)
	}
	return dirs, nil
}

// checkImage checks what a manifest and its config must agree on.
func checkImage(m *v1.Manifest, c *v1.Image) error {
	if c.RootFS.Type != "layers" {
		return fmt.Errorf("config rootfs.type is %q, want \"layers\"", c.RootFS.Type)
	}
	if len(m.Layers) != len(c.RootFS.DiffIDs) {
		return fmt.Errorf("%d layers but %d diff_ids in the config", len(m.Layers), len(c.RootFS.DiffIDs))
	}
	if err := checkDigest(m.Config.Digest); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	for i, l := range m.Layers {
		if err := checkDigest(l.Digest); err != nil {
			return fmt.Errorf("layer %d: %w", i+1, err)
		}
		if err := checkDigest(c.RootFS.DiffIDs[i]); err != nil {
			return fmt.Errorf("layer %d diff_id: %w", i+1, err)
		}
		if _, err := layerCompression(l.MediaType); err != nil {
			return fmt.Errorf("layer %d: %w", i+1, err)
		}
	}
	return nil
}

// layerCompression returns "gzip" or "" (plain tar) for a layer media type,
// and an error for one the store does not take.
func layerCompression(mt string) (string, error) {
	switch mt {
	case v1.MediaTypeImageLayer, v1.MediaTypeImageLayerNonDistributable, mediaTypeDockerLayer: //nolint:staticcheck // still to be read
		return "", nil
	case v1.MediaTypeImageLayerGzip, v1.MediaTypeImageLayerNonDistributableGzip, mediaTypeDockerLayerGzip, mediaTypeDockerForeignGzip: //nolint:staticcheck // still to be read
		return "gzip", nil
	}
	if strings.HasSuffix(mt, "+zstd") || strings.HasSuffix(mt, ".zstd") {
		return "", fmt.Errorf("zstd-compressed layer (%s) is not supported; recompress it: skopeo copy --dest-compress-format gzip ...", mt)
	}
	return "", fmt.Errorf("unsupported layer media type %q", mt)
}

// ociLayerType returns the OCI media type of a layer of the given
// compression.
func ociLayerType(compression string) string {
	if compression == "gzip" {
		return v1.MediaTypeImageLayerGzip
	}
	return v1.MediaTypeImageLayer
}

// hashReader hashes and counts what is read through it.
type hashReader struct {
	r io.Reader
	h hash.Hash
	n int64
}

func newHashReader(r io.Reader) *hashReader { return &hashReader{r: r, h: sha256.New()} }

func (h *hashReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	h.h.Write(p[:n])
	h.n += int64(n)
	return n, err
}

func (h *hashReader) digest() digest.Digest { return digest.NewDigest(digest.SHA256, h.h) }

// uncompressed returns the layer tar inside a blob of the given media type.
func uncompressed(r io.Reader, mediaType string) (io.ReadCloser, error) {
	c, err := layerCompression(mediaType)
	if err != nil {
		return nil, err
	}
	if c == "gzip" {
		zr, err := gzip.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("gzip: %w", err)
		}
		return zr, nil
	}
	return io.NopCloser(r), nil
}

// verifyLayer reads the blob of desc to its end, checking its digest and
// size, and the sha256 of its uncompressed content against diffID. With
// apply set, the uncompressed tar goes through it too.
func (t *txn) verifyLayer(desc v1.Descriptor, diffID digest.Digest, apply func(io.Reader) error) error {
	if err := checkDigest(desc.Digest); err != nil {
		return err
	}
	if err := checkDigest(diffID); err != nil {
		return fmt.Errorf("diff_id: %w", err)
	}
	f, err := t.blobReader(desc.Digest)
	if err != nil {
		return fmt.Errorf("blob %s: %w", desc.Digest, err)
	}
	defer f.Close()
	raw := newHashReader(io.LimitReader(f, desc.Size+1))
	var progress func(int64)
	if t.s.Progress != nil {
		progress = func(n int64) {
			t.s.Progress(Progress{Op: "verify", Item: desc.Digest.String(), Done: raw.n, Total: desc.Size})
		}
	}
	zr, err := uncompressed(raw, desc.MediaType)
	if err != nil {
		return fmt.Errorf("blob %s: %w", desc.Digest, err)
	}
	defer zr.Close()
	tarHash := newHashReader(zr)
	if apply != nil {
		if err := apply(tarHash); err != nil {
			return err
		}
	}
	// The rest: padding after the tar trailer, the gzip trailer, bytes
	// past the stream that make the digest differ.
	if _, err := copyProgress(io.Discard, tarHash, progress); err != nil {
		return fmt.Errorf("blob %s: %w", desc.Digest, err)
	}
	if _, err := io.Copy(io.Discard, raw); err != nil {
		return fmt.Errorf("blob %s: %w", desc.Digest, err)
	}
	if raw.n != desc.Size {
		return fmt.Errorf("blob %s: size %d, descriptor says %d", desc.Digest, raw.n, desc.Size)
	}
	if got := raw.digest(); got != desc.Digest {
		return fmt.Errorf("blob %s: content has digest %s", desc.Digest, got)
	}
	if got := tarHash.digest(); got != diffID {
		return fmt.Errorf("blob %s: uncompressed content has digest %s, config diff_id says %s", desc.Digest, got, diffID)
	}
	return nil
}

// unpackLayer unpacks and verifies the layer desc into the staging area,
// to be published as layers/DIFFID.
func (t *txn) unpackLayer(desc v1.Descriptor, diffID digest.Digest, userXattr bool) error {
	dir := t.tempPath("layer-")
	opt := layer.ApplyOptions{UserXattr: userXattr, Rootless: os.Geteuid() != 0, Warn: t.s.Warn}
	if t.s.Progress != nil {
		opt.Progress = func(_ int, bytes int64) {
			t.s.Progress(Progress{Op: "unpack", Item: diffID.String(), Done: bytes})
		}
	}
	err := t.verifyLayer(desc, diffID, func(r io.Reader) error {
		if _, err := layer.Apply(r, dir, opt); err != nil {
			return fmt.Errorf("unpack %s: %w", desc.Digest, err)
		}
		return nil
	})
	if err != nil {
		os.RemoveAll(dir)
		return err
	}
	t.layers[diffID] = dir
	return nil
}
