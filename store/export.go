package store

import (
	"fmt"
	"io"
	"os"

	"github.com/unionmount/unionmount/layer"
)

// Export writes the flattened tree of img to w as one plain rootfs tar
// (docker export): its layers applied in order, without whiteouts.
func (s *Store) Export(img *Image, w io.Writer) error {
	lowers, err := s.Lowers(img, os.Geteuid() != 0)
	if err != nil {
		return err
	}
	return s.ExportDirs(lowers, w)
}

// ExportDirs writes the flattened tree of the layer directories dirs
// (top-most first; a single plain directory, such as a mount point, works
// too) to w as a plain rootfs tar.
func (s *Store) ExportDirs(dirs []string, w io.Writer) error {
	epoch, err := SourceDateEpoch()
	if err != nil {
		return err
	}
	opt := layer.Options{Epoch: epoch, Warn: s.Warn}
	if s.Progress != nil {
		opt.Progress = func(_ int, bytes int64) { s.Progress(Progress{Op: "export", Done: bytes}) }
	}
	if _, err := layer.Export(w, dirs, opt); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	return nil
}
