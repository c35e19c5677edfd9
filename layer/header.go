package layer

import (
	"archive/tar"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/cow"
)

// header returns the canonical tar header (see "Canonical form") of the
// object st named rel: readlink gives a symlink's target and xattrs the
// xattrs a layer carries. Sockets are for the caller to leave out.
func header(rel string, st *unix.Stat_t, epoch *time.Time, readlink func() (string, error), xattrs func() ([]cow.Xattr, error)) (*tar.Header, error) {
	h := &tar.Header{
		Name:    rel,
		Mode:    int64(st.Mode & 0o7777),
		Uid:     int(st.Uid),
		Gid:     int(st.Gid),
		ModTime: clampTime(st.Mtim.Sec, epoch),
		Format:  tar.FormatPAX,
	}
	switch typ := st.Mode & unix.S_IFMT; typ {
	case unix.S_IFREG:
		h.Typeflag = tar.TypeReg
		h.Size = st.Size
	case unix.S_IFDIR:
		h.Typeflag = tar.TypeDir
		h.Name += "/"
	case unix.S_IFLNK:
		h.Typeflag = tar.TypeSymlink
		t, err := readlink()
		if err != nil {
			return nil, err
		}
		h.Linkname = t
	case unix.S_IFIFO:
		h.Typeflag = tar.TypeFifo
	case unix.S_IFCHR, unix.S_IFBLK:
		h.Typeflag = tar.TypeChar
		if typ == unix.S_IFBLK {
			h.Typeflag = tar.TypeBlock
		}
		h.Devmajor = int64(unix.Major(st.Rdev))
		h.Devminor = int64(unix.Minor(st.Rdev))
	default:
		return nil, fmt.Errorf("%s: unknown file type %#o", rel, typ)
	}
	xs, err := xattrs()
	if err != nil {
		return nil, err
	}
	for _, x := range xs {
		if h.PAXRecords == nil {
			h.PAXRecords = map[string]string{}
		}
		v := x.Value
		if x.Name == "security.capability" {
			v = capRevision2(v)
		}
		h.PAXRecords["SCHILY.xattr."+x.Name] = string(v)
	}
	return h, nil
}

// linkHeader returns the header of rel, a further name of the file whose
// first name has the header first: a hard link carrying the same
// metadata, as some unpackers apply the link header's to the file
// (layers.md: containers/storage chmods the inode with it).
func linkHeader(first *tar.Header, rel string) *tar.Header {
	h := *first
	h.Typeflag = tar.TypeLink
	h.Name = rel
	h.Linkname = first.Name
	h.Size = 0
	h.Devmajor, h.Devminor = 0, 0
	return &h
}

// clampTime returns the time sec, no later than epoch when it is set.
func clampTime(sec int64, epoch *time.Time) time.Time {
	if epoch != nil && sec > epoch.Unix() {
		sec = epoch.Unix()
	}
	return time.Unix(sec, 0)
}
