package store

import (
	"archive/tar"
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// Save writes the named images to w as one tar that is both an OCI image
// layout (oci-layout, index.json, blobs/sha256/) and a docker-save archive
// (manifest.json naming the same blobs), as docker >= 25 writes it: docker
// load, podman load, skopeo's docker-archive: and oci-archive: transports
// and umoci read it. The output is reproducible: entries sorted, owner 0:0
// without names, and every mtime SOURCE_DATE_EPOCH, or 0 when unset.
func (s *Store) Save(names []string, w io.Writer) error {
	epoch, err := SourceDateEpoch()
	if err != nil {
		return err
	}
	mtime := time.Unix(0, 0)
	if epoch != nil {
		mtime = *epoch
	}
	var imgs []*Image
	seen := map[string]bool{}
	for _, n := range names {
		img, err := s.Image(n)
		if err != nil {
			return err
		}
		if !seen[img.Name] {
			seen[img.Name] = true
			imgs = append(imgs, img)
		}
	}
	if len(imgs) == 0 {
		return fmt.Errorf("save: no image named")
	}

	blobs := map[digest.Digest]int64{}
	idx := v1.Index{Versioned: specsVersioned, MediaType: v1.MediaTypeImageIndex}
	var dms []dockerManifest
	dmOf := map[digest.Digest]int{}
	for _, img := range imgs {
		if err := checkImage(&img.Manifest, &img.Config); err != nil {
			return fmt.Errorf("save %s: %w", img.Name, err)
		}
		fi, err := os.Stat(s.blobPath(img.Digest))
		if err != nil {
			return fmt.Errorf("save %s: manifest: %w", img.Name, err)
		}
		blobs[img.Digest] = fi.Size()
		blobs[img.ConfigDigest] = img.Manifest.Config.Size
		idx.Manifests = append(idx.Manifests, v1.Descriptor{
			MediaType: v1.MediaTypeImageManifest,
			Digest:    img.Digest,
			Size:      fi.Size(),
			Annotations: map[string]string{
				v1.AnnotationRefName:     img.Name,
				annotationContainerdName: fullName(img.Name),
			},
		})
		i, ok := dmOf[img.Digest]
		if !ok {
			i = len(dms)
			dmOf[img.Digest] = i
			dm := dockerManifest{Config: blobName(img.ConfigDigest), Layers: []string{}}
			for _, l := range img.Manifest.Layers {
				blobs[l.Digest] = l.Size
				dm.Layers = append(dm.Layers, blobName(l.Digest))
			}
			dms = append(dms, dm)
		}
		dms[i].RepoTags = append(dms[i].RepoTags, img.Name)
	}
	indexJSON, err := json.Marshal(idx)
	if err != nil {
		return err
	}
	manifestJSON, err := json.Marshal(dms)
	if err != nil {
		return err
	}
	layoutJSON, err := json.Marshal(v1.ImageLayout{Version: v1.ImageLayoutVersion})
	if err != nil {
		return err
	}

	var total, done int64
	for _, n := range blobs {
		total += n
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	tw := tar.NewWriter(bw)
	header := func(name string, typ byte, size int64) error {
		mode := int64(0o644)
		if typ == tar.TypeDir {
			mode = 0o755
		}
		return tw.WriteHeader(&tar.Header{Typeflag: typ, Name: name, Size: size, Mode: mode, ModTime: mtime, Format: tar.FormatPAX})
	}
	file := func(name string, data []byte) error {
		if err := header(name, tar.TypeReg, int64(len(data))); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	// Sorted: "blobs/" < "blobs/sha256/" < "blobs/sha256/HEX" <
	// "index.json" < "manifest.json" < "oci-layout".
	if err := header("blobs/", tar.TypeDir, 0); err != nil {
		return fmt.Errorf("save: %w", err)
	}
	if err := header("blobs/sha256/", tar.TypeDir, 0); err != nil {
		return fmt.Errorf("save: %w", err)
	}
	ds := make([]digest.Digest, 0, len(blobs))
	for d := range blobs {
		ds = append(ds, d)
	}
	slices.Sort(ds)
	for _, d := range ds {
		if err := s.saveBlob(tw, d, blobs[d], header, func(n int64) {
			if s.Progress != nil {
				s.Progress(Progress{Op: "save", Item: d.String(), Done: done + n, Total: total})
			}
		}); err != nil {
			return fmt.Errorf("save: %w", err)
		}
		done += blobs[d]
	}
	for _, f := range []struct {
		name string
		data []byte
	}{{v1.ImageIndexFile, indexJSON}, {"manifest.json", manifestJSON}, {v1.ImageLayoutFile, layoutJSON}} {
		if err := file(f.name, f.data); err != nil {
			return fmt.Errorf("save: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("save: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("save: %w", err)
	}
	return nil
}

// blobName is a blob's path in a saved archive.
func blobName(d digest.Digest) string {
	return path.Join(v1.ImageBlobsDir, d.Algorithm().String(), d.Encoded())
}

// saveBlob copies the blob d of the given size into tw, checking its
// digest on the way: a corrupt store must not produce an archive that
// looks fine.
func (s *Store) saveBlob(tw *tar.Writer, d digest.Digest, size int64, header func(string, byte, int64) error, progress func(int64)) error {
	f, err := os.Open(s.blobPath(d))
	if err != nil {
		return fmt.Errorf("blob %s: %w", d, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.Size() != size {
		return fmt.Errorf("blob %s: size %d, descriptor says %d", d, fi.Size(), size)
	}
	if err := header(blobName(d), tar.TypeReg, size); err != nil {
		return err
	}
	h := newHashReader(io.LimitReader(f, size))
	if _, err := copyProgress(tw, h, progress); err != nil {
		return err
	}
	if h.n != size || h.digest() != d {
		return fmt.Errorf("blob %s: content has digest %s: the store is damaged", d, h.digest())
	}
	return nil
}

// HistoryEntry is one line of an image's history, newest first in
// History's result.
type HistoryEntry struct {
	Created   *time.Time
	CreatedBy string
	Author    string
	Comment   string
	// Layer is the layer the entry made (its blob digest), empty for an
	// empty_layer entry. Size is its blob's size.
	Layer digest.Digest
	Size  int64
}

// History returns img's history as docker history shows it: newest first,
// each entry with the layer it created. Layers without a history entry
// (images made without history) get an entry of their own.
func (s *Store) History(img *Image) []HistoryEntry {
	var out []HistoryEntry
	layers := img.Manifest.Layers
	li := 0
	for _, h := range img.Config.History {
		e := HistoryEntry{Created: h.Created, CreatedBy: h.CreatedBy, Author: h.Author, Comment: h.Comment}
		if !h.EmptyLayer && li < len(layers) {
			e.Layer, e.Size = layers[li].Digest, layers[li].Size
			li++
		}
		out = append(out, e)
	}
	for ; li < len(layers); li++ {
		out = append(out, HistoryEntry{Layer: layers[li].Digest, Size: layers[li].Size})
	}
	slices.Reverse(out)
	return out
}
