package store

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"runtime"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/unionmount/unionmount/cow"
	"github.com/unionmount/unionmount/layer"
)

// ImportOptions tune Import.
type ImportOptions struct {
	// Message is the history comment of the layer.
	Message string
	// Author is the image's author.
	Author string
	// Created is the creation time; zero means SOURCE_DATE_EPOCH if
	// set, else now.
	Created time.Time
}

// Import makes a one-layer image called name from a plain rootfs tar read
// from r (gzip, bzip2 or uncompressed), as docker import does. Entries
// named ".wh.*" are refused: a rootfs has no whiteouts. The tar is
// unpacked and written again in the canonical form (layer.Write), so the
// same tree imports as the same layer whatever tool made the tar; the
// unpacked tree becomes the image's layer directory.
func (s *Store) Import(r io.Reader, name string, opt ImportOptions) (*Image, error) {
	norm, err := NormalizeName(name)
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
	cr := &countReader{r: r}
	zr, err := layer.Decompress(cr)
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	defer zr.Close()

	dir := t.tempPath("import-")
	aopt := layer.ApplyOptions{UserXattr: os.Geteuid() != 0, Rootless: os.Geteuid() != 0, Warn: s.Warn}
	if s.Progress != nil {
		aopt.Progress = func(_ int, _ int64) { s.Progress(Progress{Op: "import", Done: cr.n}) }
	}
	if err := applyRootfs(zr, dir, aopt); err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	desc, diffID, err := t.writeLayer(NewLayer{Dir: dir}, epoch)
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	t.layers[diffID] = dir
	created := createdTime(opt.Created, epoch)
	cfg := v1.Image{
		Created:  &created,
		Author:   opt.Author,
		Platform: v1.Platform{Architecture: runtime.GOARCH, OS: "linux"},
		RootFS:   v1.RootFS{Type: "layers", DiffIDs: []digest.Digest{diffID}},
		History:  []v1.History{{Created: &created, CreatedBy: "unionmount import", Author: opt.Author, Comment: opt.Message}},
	}
	img, mdesc, err := t.putImage(norm, cfg, []v1.Descriptor{desc})
	if err != nil {
		return nil, err
	}
	if err := t.publish(nil, func(idx *v1.Index) error { tagImage(idx, norm, mdesc); return nil }); err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	return img, nil
}

// applyRootfs unpacks the rootfs tar r into the new directory dir,
// refusing whiteout names, which a rootfs must not have. A second reader
// checks the names of the same bytes that layer.Apply reads.
func applyRootfs(r io.Reader, dir string, opt layer.ApplyOptions) error {
	pr, pw := io.Pipe()
	checked := make(chan error, 1)
	go func() {
		err := checkRootfsNames(pr)
		// Drain, so that the writer never blocks on a reader that
		// stopped.
		_, _ = io.Copy(io.Discard, pr)
		checked <- err
	}()
	tee := io.TeeReader(r, pw)
	_, err := layer.Apply(tee, dir, opt)
	if err == nil {
		// What follows the tar trailer, so the checker sees the end.
		_, err = io.Copy(io.Discard, tee)
	}
	pw.CloseWithError(err)
	if cerr := <-checked; cerr != nil {
		return cerr
	}
	return err
}

// checkRootfsNames reads a tar and refuses whiteout names in it.
func checkRootfsNames(r io.Reader) error {
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			// layer.Apply reports a broken tar.
			return nil
		}
		base := path.Base(strings.TrimSuffix(hdr.Name, "/"))
		if strings.HasPrefix(base, cow.OCIWhiteoutPrefix) {
			return errors.New("rootfs tar has a whiteout entry " + hdr.Name + " (a layer, not a rootfs? use load for images)")
		}
	}
}
