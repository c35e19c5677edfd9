package store

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// source is where Load and LoadLayout find the documents and blobs of the
// images they bring in.
type source interface {
	// has reports whether the file name exists.
	has(name string) bool
	// readFile returns the small file name (at most maxJSON bytes).
	readFile(name string) ([]byte, error)
	// stageBlob puts the blob desc into the transaction, checking its
	// digest and size.
	stageBlob(t *txn, desc v1.Descriptor) error
}

// loader brings the images of a source into a transaction.
type loader struct {
	t   *txn
	src source
	// verified remembers the layers whose diff_id was checked.
	verified map[[2]digest.Digest]bool
	// tags maps the names to tag to the manifest descriptors.
	tags  []string
	descs map[string]v1.Descriptor
	imgs  []*Image
}

// Load brings into the store the images of an archive read from r: a
// docker-save tar (manifest.json, as docker and skopeo write it), an OCI
// image layout tar (oci-layout and index.json, as skopeo's oci-archive
// writes it), or both in one (as docker >= 25 and Save write). Everything
// is verified, and the layers unpacked, before anything is published; on
// any error the store is left as it was. progress, if set, overrides the
// Store's Progress.
func (s *Store) Load(r io.Reader, progress func(Progress)) ([]*Image, error) {
	if progress != nil {
		s2 := *s
		s2.Progress = progress
		s = &s2
	}
	t, err := s.begin()
	if err != nil {
		return nil, err
	}
	defer t.close()
	a, err := readArchive(t, r)
	if err != nil {
		return nil, fmt.Errorf("load: %w", err)
	}
	l := t.newLoader(a)
	switch {
	case a.has(v1.ImageIndexFile):
		err = l.loadIndex(a.dockerNames())
	case a.has("manifest.json"):
		err = l.loadDocker()
	default:
		err = errors.New("not a docker-save or OCI archive: no manifest.json or index.json")
	}
	if err != nil {
		return nil, fmt.Errorf("load: %w", err)
	}
	return l.publish()
}

func (t *txn) newLoader(src source) *loader {
	return &loader{t: t, src: src, verified: map[[2]digest.Digest]bool{}, descs: map[string]v1.Descriptor{}}
}

// publish tags the loaded images.
func (l *loader) publish() ([]*Image, error) {
	if len(l.imgs) == 0 {
		return nil, errors.New("load: no named image in the input")
	}
	err := l.t.publish(nil, func(idx *v1.Index) error {
		for _, n := range l.tags {
			tagImage(idx, n, l.descs[n])
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("load: %w", err)
	}
	return l.imgs, nil
}

// add records a verified image under its names.
func (l *loader) add(names []string, desc v1.Descriptor, m v1.Manifest, c v1.Image) error {
	for _, n := range names {
		norm, err := NormalizeName(n)
		if err != nil {
			return err
		}
		if _, ok := l.descs[norm]; !ok {
			l.tags = append(l.tags, norm)
		}
		l.descs[norm] = desc
		l.imgs = append(l.imgs, &Image{Name: norm, Digest: desc.Digest, Manifest: m, Config: c, ConfigDigest: m.Config.Digest})
	}
	return nil
}

// readJSONFile decodes a small file of the source.
func (l *loader) readJSONFile(name string, v any) error {
	data, err := l.src.readFile(name)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// blobJSON stages the blob desc and decodes it.
func (l *loader) blobJSON(desc v1.Descriptor, v any) ([]byte, error) {
	if desc.Size > maxJSON {
		return nil, fmt.Errorf("blob %s: %d bytes is too large for a JSON document", desc.Digest, desc.Size)
	}
	if err := l.src.stageBlob(l.t, desc); err != nil {
		return nil, err
	}
	f, err := l.t.blobReader(desc.Digest)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxJSON+1))
	if err != nil {
		return nil, err
	}
	if digest.FromBytes(data) != desc.Digest {
		return nil, fmt.Errorf("blob %s: content changed while loading", desc.Digest)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return nil, fmt.Errorf("blob %s: %w", desc.Digest, err)
	}
	return data, nil
}

// loadIndex loads the images named in an OCI layout's index.json.
// dockerNames gives the names a docker manifest.json beside it has for a
// config digest, for descriptors without a name of their own.
func (l *loader) loadIndex(dockerNames map[digest.Digest][]string) error {
	if !l.src.has(v1.ImageLayoutFile) {
		return fmt.Errorf("OCI layout without %s", v1.ImageLayoutFile)
	}
	var layout v1.ImageLayout
	if err := l.readJSONFile(v1.ImageLayoutFile, &layout); err != nil {
		return err
	}
	if layout.Version != v1.ImageLayoutVersion {
		return fmt.Errorf("%s: version %q, want %q", v1.ImageLayoutFile, layout.Version, v1.ImageLayoutVersion)
	}
	var idx v1.Index
	if err := l.readJSONFile(v1.ImageIndexFile, &idx); err != nil {
		return err
	}
	if idx.SchemaVersion != 2 {
		return fmt.Errorf("%s: schemaVersion %d, want 2", v1.ImageIndexFile, idx.SchemaVersion)
	}
	for _, d := range idx.Manifests {
		var names []string
		if n := d.Annotations[annotationContainerdName]; n != "" {
			names = []string{n}
		} else if n := d.Annotations[v1.AnnotationRefName]; n != "" {
			names = []string{n}
		}
		md, err := l.resolveIndex(d)
		if err != nil {
			return err
		}
		m, c, err := l.loadManifest(md)
		if err != nil {
			return fmt.Errorf("image %s: %w", md.Digest, err)
		}
		if names == nil {
			names = dockerNames[m.Config.Digest]
		}
		if err := l.add(names, md, m, c); err != nil {
			return err
		}
	}
	return nil
}

// resolveIndex returns the manifest descriptor for this platform, going
// through image indexes.
func (l *loader) resolveIndex(d v1.Descriptor) (v1.Descriptor, error) {
	return resolveIndex(d, func(d v1.Descriptor, v any) error {
		_, err := l.blobJSON(d, v)
		return err
	})
}

// loadManifest stages and verifies the image of the manifest md.
func (l *loader) loadManifest(md v1.Descriptor) (v1.Manifest, v1.Image, error) {
	var m v1.Manifest
	var c v1.Image
	if err := checkDigest(md.Digest); err != nil {
		return m, c, err
	}
	if _, err := l.blobJSON(md, &m); err != nil {
		return m, c, err
	}
	if m.SchemaVersion != 2 {
		return m, c, fmt.Errorf("manifest schemaVersion %d, want 2", m.SchemaVersion)
	}
	if m.MediaType != "" && m.MediaType != md.MediaType {
		return m, c, fmt.Errorf("manifest media type %q, descriptor says %q", m.MediaType, md.MediaType)
	}
	switch m.Config.MediaType {
	case v1.MediaTypeImageConfig, mediaTypeDockerConfig:
	default:
		return m, c, fmt.Errorf("config media type %q is not an image config", m.Config.MediaType)
	}
	if err := checkDigest(m.Config.Digest); err != nil {
		return m, c, fmt.Errorf("config: %w", err)
	}
	if _, err := l.blobJSON(m.Config, &c); err != nil {
		return m, c, err
	}
	if err := l.verifyLayers(&m, &c); err != nil {
		return m, c, err
	}
	return m, c, nil
}

// verifyLayers stages the layers of an image and checks them against the
// config.
func (l *loader) verifyLayers(m *v1.Manifest, c *v1.Image) error {
	if err := checkImage(m, c); err != nil {
		return err
	}
	for i, desc := range m.Layers {
		id := c.RootFS.DiffIDs[i]
		key := [2]digest.Digest{desc.Digest, id}
		if l.verified[key] {
			continue
		}
		if err := l.src.stageBlob(l.t, desc); err != nil {
			return fmt.Errorf("layer %d: %w", i+1, err)
		}
		// A layer not yet unpacked is unpacked now: layer.Apply refuses
		// what a layer must not do (escaping paths, links out of the
		// layer), so a hostile layer fails the load, not a later mount.
		_, staged := l.t.layers[id]
		_, err := os.Lstat(l.t.s.layerPath(id))
		if err == nil || staged {
			err = l.t.verifyLayer(desc, id, nil)
		} else {
			err = l.t.unpackLayer(desc, id, os.Geteuid() != 0)
		}
		if err != nil {
			return fmt.Errorf("layer %d: %w", i+1, err)
		}
		l.verified[key] = true
	}
	return nil
}

// dockerManifest is one entry of a docker-save manifest.json (docker
// image-spec v1.2, "Combined Image JSON + Filesystem Changeset Format").
type dockerManifest struct {
	Config   string
	RepoTags []string
	Layers   []string
}

// readDockerManifest reads manifest.json.
func readDockerManifest(src source) ([]dockerManifest, error) {
	data, err := src.readFile("manifest.json")
	if err != nil {
		return nil, err
	}
	var ms []dockerManifest
	if err := json.Unmarshal(data, &ms); err != nil {
		return nil, fmt.Errorf("manifest.json: %w", err)
	}
	if ms == nil {
		return nil, errors.New("manifest.json: null")
	}
	return ms, nil
}

// loadDocker loads the images of a docker-save archive's manifest.json.
func (l *loader) loadDocker() error {
	a := l.src.(*archive)
	ms, err := readDockerManifest(a)
	if err != nil {
		return err
	}
	for i, dm := range ms {
		if err := l.loadDockerImage(a, dm); err != nil {
			return fmt.Errorf("manifest.json entry %d: %w", i+1, err)
		}
	}
	return nil
}

func (l *loader) loadDockerImage(a *archive, dm dockerManifest) error {
	cfgFile, err := a.lookup(dm.Config)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	cfgDesc := v1.Descriptor{MediaType: v1.MediaTypeImageConfig, Digest: cfgFile.digest, Size: cfgFile.size}
	// A config named after a digest must have it.
	if want, ok := digestInName(dm.Config); ok && want != cfgFile.digest {
		return fmt.Errorf("config %s: content has digest %s", dm.Config, cfgFile.digest)
	}
	var c v1.Image
	if _, err := l.blobJSON(cfgDesc, &c); err != nil {
		return fmt.Errorf("config %s: %w", dm.Config, err)
	}
	if c.RootFS.Type != "layers" {
		return fmt.Errorf("config %s: rootfs.type is %q, want \"layers\"", dm.Config, c.RootFS.Type)
	}
	if len(dm.Layers) != len(c.RootFS.DiffIDs) {
		return fmt.Errorf("%d layers but %d diff_ids in config %s", len(dm.Layers), len(c.RootFS.DiffIDs), dm.Config)
	}
	m := v1.Manifest{Versioned: specsVersioned, MediaType: v1.MediaTypeImageManifest, Config: cfgDesc, Layers: []v1.Descriptor{}}
	for _, name := range dm.Layers {
		f, err := a.lookup(name)
		if err != nil {
			return fmt.Errorf("layer: %w", err)
		}
		comp, err := sniffCompression(f.path)
		if err != nil {
			return fmt.Errorf("layer %s: %w", name, err)
		}
		m.Layers = append(m.Layers, v1.Descriptor{MediaType: ociLayerType(comp), Digest: f.digest, Size: f.size})
	}
	if err := l.verifyLayers(&m, &c); err != nil {
		return err
	}
	mData, err := json.Marshal(m)
	if err != nil {
		return err
	}
	md, err := l.t.putBlobBytes(mData)
	if err != nil {
		return err
	}
	return l.add(dm.RepoTags, v1.Descriptor{MediaType: v1.MediaTypeImageManifest, Digest: md, Size: int64(len(mData))}, m, c)
}

// digestInName returns the sha256 digest that a docker archive's file name
// carries ("HEX.json", "blobs/sha256/HEX", "sha256:HEX").
func digestInName(name string) (digest.Digest, bool) {
	base := path.Base(name)
	base = strings.TrimSuffix(base, ".json")
	base = strings.TrimPrefix(base, "sha256:")
	d := digest.NewDigestFromEncoded(digest.SHA256, base)
	return d, d.Validate() == nil
}

// sniffCompression tells a gzip layer file from a plain tar by its first
// bytes, refusing the compressions the store does not take.
func sniffCompression(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	magic := make([]byte, 4)
	n, _ := io.ReadFull(f, magic)
	magic = magic[:n]
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		return "gzip", nil
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return "", errors.New("zstd-compressed layer is not supported")
	case bytes.HasPrefix(magic, []byte("BZh")):
		return "", errors.New("bzip2-compressed layer is not supported in an image")
	}
	return "", nil
}

// archive is a tar read into the staging area: every regular file staged
// under its digest, symlinks and hard links kept as links.
type archive struct {
	files map[string]*archiveFile
	links map[string]string
}

type archiveFile struct {
	path   string
	digest digest.Digest
	size   int64
}

// readArchive reads an archive into the transaction's staging directory.
func readArchive(t *txn, r io.Reader) (*archive, error) {
	a := &archive{files: map[string]*archiveFile{}, links: map[string]string{}}
	seen := map[string]bool{}
	cr := &countReader{r: r}
	var last int64
	tr := tar.NewReader(cr)
	for {
		hdr, err := tr.Next()
		if err == io.EOF && cr.n == 0 {
			return nil, errors.New("empty input, not an archive")
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read archive: %w", err)
		}
		name, err := cleanArchivePath(hdr.Name)
		if err != nil {
			return nil, err
		}
		if name == "." {
			continue
		}
		for k := range hdr.PAXRecords {
			// The reader would expand the holes: a few bytes of
			// archive could declare terabytes of file.
			if strings.HasPrefix(k, "GNU.sparse.") {
				return nil, fmt.Errorf("archive entry %s: sparse files are not expected in an image archive", name)
			}
		}
		if seen[name] {
			return nil, fmt.Errorf("archive has two entries named %q", name)
		}
		seen[name] = true
		switch hdr.Typeflag {
		case tar.TypeDir:
		case tar.TypeReg, tar.TypeRegA: //nolint:staticcheck // old archives
			p := t.tempPath("file-")
			d, n, err := t.stageFile(p, tr)
			if err != nil {
				return nil, fmt.Errorf("archive entry %s: %w", name, err)
			}
			a.files[name] = &archiveFile{path: p, digest: d, size: n}
		case tar.TypeSymlink:
			if path.IsAbs(hdr.Linkname) {
				return nil, fmt.Errorf("archive symlink %s points to absolute path %q", name, hdr.Linkname)
			}
			target := path.Join(path.Dir(name), hdr.Linkname)
			if target == ".." || strings.HasPrefix(target, "../") {
				return nil, fmt.Errorf("archive symlink %s points outside the archive (%q)", name, hdr.Linkname)
			}
			a.links[name] = target
		case tar.TypeLink:
			target, err := cleanArchivePath(hdr.Linkname)
			if err != nil {
				return nil, fmt.Errorf("archive hard link %s: %w", name, err)
			}
			a.links[name] = target
		case tar.TypeXGlobalHeader:
		default:
			return nil, fmt.Errorf("archive entry %s: unexpected type %q", name, hdr.Typeflag)
		}
		if p := t.s.Progress; p != nil && cr.n-last >= 4<<20 {
			p(Progress{Op: "load", Item: name, Done: cr.n})
			last = cr.n
		}
	}
	if p := t.s.Progress; p != nil {
		p(Progress{Op: "load", Done: cr.n})
	}
	return a, nil
}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// stageFile writes r to the staging file p, returning its digest and size.
func (t *txn) stageFile(p string, r io.Reader) (digest.Digest, int64, error) {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return "", 0, err
	}
	h := newHashReader(r)
	n, err := io.Copy(f, h)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", 0, err
	}
	return h.digest(), n, nil
}

// cleanArchivePath returns the clean relative form of an archive entry
// name, refusing absolute names and names with "..".
func cleanArchivePath(name string) (string, error) {
	if name == "" {
		return "", errors.New("archive entry with an empty name")
	}
	if path.IsAbs(name) {
		return "", fmt.Errorf("archive entry %q: absolute path", name)
	}
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return "", fmt.Errorf("archive entry %q: path with \"..\"", name)
		}
	}
	return path.Clean(name), nil
}

// lookup finds the regular file name, following the archive's links.
func (a *archive) lookup(name string) (*archiveFile, error) {
	clean, err := cleanArchivePath(name)
	if err != nil {
		return nil, err
	}
	p := clean
	for hops := 0; ; hops++ {
		if hops > 40 {
			return nil, fmt.Errorf("%s: too many links", name)
		}
		if f, ok := a.files[p]; ok {
			return f, nil
		}
		// Replace the longest linked prefix of p by its target.
		q, rest, found := p, "", false
		for {
			if target, ok := a.links[q]; ok {
				p, found = path.Join(target, rest), true
				break
			}
			i := strings.LastIndexByte(q, '/')
			if i < 0 {
				break
			}
			q, rest = q[:i], path.Join(q[i+1:], rest)
		}
		if !found {
			return nil, fmt.Errorf("%s: not in the archive", name)
		}
		if p == ".." || strings.HasPrefix(p, "../") {
			return nil, fmt.Errorf("%s: link points outside the archive", name)
		}
	}
}

func (a *archive) has(name string) bool {
	_, err := a.lookup(name)
	return err == nil
}

func (a *archive) readFile(name string) ([]byte, error) {
	f, err := a.lookup(name)
	if err != nil {
		return nil, err
	}
	if f.size > maxJSON {
		return nil, fmt.Errorf("%s: %d bytes is too large for a JSON document", name, f.size)
	}
	return os.ReadFile(f.path)
}

func (a *archive) stageBlob(t *txn, desc v1.Descriptor) error {
	if err := checkDigest(desc.Digest); err != nil {
		return err
	}
	if _, ok := t.blobs[desc.Digest]; ok {
		return nil
	}
	name := path.Join(v1.ImageBlobsDir, desc.Digest.Algorithm().String(), desc.Digest.Encoded())
	f, err := a.lookup(name)
	if err != nil {
		// The docker half of an archive names blobs its own way; the
		// caller passes the staged file's digest, so a match by digest
		// is the same content.
		if f = a.byDigest(desc.Digest); f == nil {
			return fmt.Errorf("blob %s: missing (%w)", desc.Digest, err)
		}
	}
	if f.digest != desc.Digest {
		return fmt.Errorf("blob %s: content has digest %s", desc.Digest, f.digest)
	}
	if f.size != desc.Size {
		return fmt.Errorf("blob %s: size %d, descriptor says %d", desc.Digest, f.size, desc.Size)
	}
	t.blobs[desc.Digest] = f.path
	return nil
}

// byDigest finds a staged file by its content digest.
func (a *archive) byDigest(d digest.Digest) *archiveFile {
	for _, f := range a.files {
		if f.digest == d {
			return f
		}
	}
	return nil
}

// dockerNames returns the RepoTags of a manifest.json beside an OCI index,
// by config digest; none if there is no usable manifest.json.
func (a *archive) dockerNames() map[digest.Digest][]string {
	names := map[digest.Digest][]string{}
	if !a.has("manifest.json") {
		return names
	}
	ms, err := readDockerManifest(a)
	if err != nil {
		return names
	}
	for _, m := range ms {
		if f, err := a.lookup(m.Config); err == nil {
			names[f.digest] = append(names[f.digest], m.RepoTags...)
		}
	}
	return names
}
