package store

import (
	"bufio"
	"compress/gzip"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/layer"
)

// gzipLevel is the one compression level of the layers the store writes:
// with the stdlib's gzip and a zero header (no name, no mtime), the same
// tar gives the same blob.
const gzipLevel = gzip.DefaultCompression

// NewLayer is a layer to commit: the changes in the directory Dir (an
// upper) over the stack Lowers.
type NewLayer struct {
	// Dir holds the changes, in cow's layer format.
	Dir string
	// Lowers are the layers below Dir, top-most first: where whiteouts
	// and opaque directories are checked against.
	Lowers []string
	// Created is the layer's creation time in the history; zero means
	// SOURCE_DATE_EPOCH if set, else now.
	Created time.Time
	// CreatedBy, Comment and Author go into the history entry.
	CreatedBy, Comment, Author string
}

// SourceDateEpoch returns the time in $SOURCE_DATE_EPOCH
// (reproducible-builds.org), nil when it is not set.
func SourceDateEpoch() (*time.Time, error) {
	v := os.Getenv("SOURCE_DATE_EPOCH")
	if v == "" {
		return nil, nil
	}
	sec, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("SOURCE_DATE_EPOCH=%q: not a number of seconds", v)
	}
	t := time.Unix(sec, 0).UTC()
	return &t, nil
}

// createdTime returns the creation time for new content: t if set, else
// SOURCE_DATE_EPOCH, else now, in whole seconds.
func createdTime(t time.Time, epoch *time.Time) time.Time {
	switch {
	case !t.IsZero():
	case epoch != nil:
		t = *epoch
	default:
		t = time.Now()
	}
	return t.UTC().Truncate(time.Second)
}

// Commit makes a new image tagged tag from parent (nil: from scratch) and
// layers, bottom-up. Each layer's changes are written as a canonical layer
// tar (layer.Write), gzip-compressed into a blob; the config is the
// parent's with the new diff_ids and history entries appended. The parent's
// layers are shared by digest, not copied.
func (s *Store) Commit(parent *Image, layers []NewLayer, tag string) (*Image, error) {
	name, err := NormalizeName(tag)
	if err != nil {
		return nil, err
	}
	epoch, err := SourceDateEpoch()
	if err != nil {
		return nil, err
	}
	t, err := s.begin()
	if err != nil {
		return nil, err
	}
	defer t.close()

	var cfg v1.Image
	var descs []v1.Descriptor
	var need []digest.Digest
	if parent != nil {
		// A deep copy, so the parent stays as read.
		data, err := json.Marshal(parent.Config)
		if err != nil {
			return nil, err
		}
		if err := json.Unmarshal(data, &cfg); err != nil {
			return nil, err
		}
		if err := checkImage(&parent.Manifest, &cfg); err != nil {
			return nil, fmt.Errorf("parent %s: %w", parent.Name, err)
		}
		for _, l := range parent.Manifest.Layers {
			c, _ := layerCompression(l.MediaType)
			descs = append(descs, v1.Descriptor{MediaType: ociLayerType(c), Digest: l.Digest, Size: l.Size})
			need = append(need, l.Digest)
		}
	} else {
		cfg = v1.Image{
			Platform: v1.Platform{Architecture: runtime.GOARCH, OS: "linux"},
			RootFS:   v1.RootFS{Type: "layers", DiffIDs: []digest.Digest{}},
		}
	}
	for i, nl := range layers {
		desc, diffID, err := t.writeLayer(nl, epoch)
		if err != nil {
			return nil, fmt.Errorf("commit %s: %w", nl.Dir, err)
		}
		descs = append(descs, desc)
		created := createdTime(nl.Created, epoch)
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, diffID)
		cfg.History = append(cfg.History, v1.History{Created: &created, CreatedBy: nl.CreatedBy, Author: nl.Author, Comment: nl.Comment})
		if i == len(layers)-1 {
			cfg.Created = &created
		}
		if nl.Author != "" {
			cfg.Author = nl.Author
		}
	}
	img, desc, err := t.putImage(name, cfg, descs)
	if err != nil {
		return nil, err
	}
	if err := t.publish(need, func(idx *v1.Index) error { tagImage(idx, name, desc); return nil }); err != nil {
		return nil, err
	}
	return img, nil
}

// writeLayer stages the layer tar of nl, gzip-compressed, and returns its
// descriptor and diff_id.
func (t *txn) writeLayer(nl NewLayer, epoch *time.Time) (v1.Descriptor, digest.Digest, error) {
	opt := layer.Options{Epoch: epoch, Warn: t.s.Warn}
	if t.s.Progress != nil {
		opt.Progress = func(_ int, bytes int64) {
			t.s.Progress(Progress{Op: "commit", Item: nl.Dir, Done: bytes})
		}
	}
	var diffID digest.Digest
	d, size, err := t.writeBlob(func(w io.Writer) error {
		zw, err := gzip.NewWriterLevel(w, gzipLevel)
		if err != nil {
			return err
		}
		h := sha256.New()
		if _, err := layer.Write(io.MultiWriter(zw, h), nl.Dir, nl.Lowers, opt); err != nil {
			return err
		}
		diffID = digest.NewDigest(digest.SHA256, h)
		return zw.Close()
	})
	if err != nil {
		return v1.Descriptor{}, "", err
	}
	return v1.Descriptor{MediaType: v1.MediaTypeImageLayerGzip, Digest: d, Size: size}, diffID, nil
}

// writeBlob stages the blob that write produces.
func (t *txn) writeBlob(write func(w io.Writer) error) (digest.Digest, int64, error) {
	p := t.tempPath("blob-")
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return "", 0, fmt.Errorf("staging: %w", err)
	}
	h := sha256.New()
	cw := &countWriter{w: io.MultiWriter(f, h)}
	bw := bufio.NewWriterSize(cw, 1<<20)
	err = write(bw)
	if err == nil {
		err = bw.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(p)
		return "", 0, err
	}
	d := digest.NewDigest(digest.SHA256, h)
	if _, ok := t.blobs[d]; ok {
		os.Remove(p)
	} else {
		t.blobs[d] = p
	}
	return d, cw.n, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// putImage stages the config and manifest of an image made of layers.
func (t *txn) putImage(name string, cfg v1.Image, layers []v1.Descriptor) (*Image, v1.Descriptor, error) {
	cfgData, err := json.Marshal(cfg)
	if err != nil {
		return nil, v1.Descriptor{}, err
	}
	cfgDigest, err := t.putBlobBytes(cfgData)
	if err != nil {
		return nil, v1.Descriptor{}, err
	}
	if layers == nil {
		layers = []v1.Descriptor{}
	}
	m := v1.Manifest{
		Versioned: specsVersioned,
		MediaType: v1.MediaTypeImageManifest,
		Config:    v1.Descriptor{MediaType: v1.MediaTypeImageConfig, Digest: cfgDigest, Size: int64(len(cfgData))},
		Layers:    layers,
	}
	mData, err := json.Marshal(m)
	if err != nil {
		return nil, v1.Descriptor{}, err
	}
	mDigest, err := t.putBlobBytes(mData)
	if err != nil {
		return nil, v1.Descriptor{}, err
	}
	desc := v1.Descriptor{MediaType: v1.MediaTypeImageManifest, Digest: mDigest, Size: int64(len(mData))}
	return &Image{Name: name, Digest: mDigest, Manifest: m, Config: cfg, ConfigDigest: cfgDigest}, desc, nil
}

// tagImage points the tag name at the manifest desc in idx, replacing any
// descriptor of the same name.
func tagImage(idx *v1.Index, name string, desc v1.Descriptor) {
	var ms []v1.Descriptor
	for _, d := range idx.Manifests {
		if n, ok := refName(d); ok && n == name {
			continue
		}
		ms = append(ms, d)
	}
	idx.Manifests = append(ms, v1.Descriptor{
		MediaType:   desc.MediaType,
		Digest:      desc.Digest,
		Size:        desc.Size,
		Annotations: map[string]string{v1.AnnotationRefName: name},
	})
}

// AdoptLayer makes dir the unpacked layer diffID by renaming it into the
// store, after a Commit that wrote that layer from dir: the layer need
// not be unpacked from its blob when mounted. dir must be on the store's
// filesystem and hold the layer in cow's lower format. If the store has
// the layer unpacked already, dir stays where it is and AdoptLayer
// reports false.
func (s *Store) AdoptLayer(diffID digest.Digest, dir string) (bool, error) {
	if err := checkDigest(diffID); err != nil {
		return false, err
	}
	unlock, err := s.lock()
	if err != nil {
		return false, err
	}
	defer unlock()
	if _, err := os.Lstat(s.layerPath(diffID)); err == nil {
		return false, nil
	}
	if err := syncfs(dir); err != nil {
		return false, fmt.Errorf("adopt layer %s: %w", dir, err)
	}
	if err := os.Rename(dir, s.layerPath(diffID)); err != nil {
		return false, fmt.Errorf("adopt layer %s: %w", dir, err)
	}
	return true, syncDir(s.path(layersDir))
}
