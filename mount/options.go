package mount

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/unionmount/unionmount/cow"
	"github.com/unionmount/unionmount/fs"
)

// MaxLowers is the most lower directories a union may have, 500 as in the
// kernel (OVL_MAX_STACK).
const MaxLowers = cow.MaxLowers

// Options describes one union mount.
type Options struct {
	// Lowers are the read-only directories, top-most first.
	Lowers []string
	// Upper is the writable directory; empty for a read-only union.
	Upper string
	// Work is the work directory, on the upper's filesystem. Empty means
	// the default, DefaultWork(Upper).
	Work string
	// Mountpoint is the directory the merged view is mounted on.
	Mountpoint string
	// FsName is the source shown by /proc/mounts and df; "unionmount"
	// when empty.
	FsName string

	// ReadOnly mounts the union read-only. An upper, if given, is then
	// shown as the top-most lower and never written, as kernel overlayfs
	// does on a read-only mount.
	ReadOnly bool
	// AllowOther lets users other than the mounter use the mount.
	AllowOther bool
	// DefaultPermissions makes the kernel check permissions from the
	// modes and owners the union shows.
	DefaultPermissions bool
	// UserXattr keeps the union's own xattrs in the user.* namespace
	// (the kernel's userxattr mode), as needed without root.
	UserXattr bool
	// Volatile skips every fsync (cow.Config.Volatile), for throwaway
	// uppers.
	Volatile bool
	// NoMetacopy turns metadata-only copy-up off (-o metacopy=off): a
	// change of metadata copies the whole file, as before. Metadata-only
	// copies already in the layers are read either way.
	NoMetacopy bool
	// Cache is the kernel caching policy; see fs.Cache.
	Cache fs.Cache
	// Debug logs every FUSE request to stderr, or to Log.
	Debug bool
	// Log is a file the daemon appends its diagnostics to once detached
	// (errors, --debug output, a stack dump on SIGQUIT); without it they
	// are discarded.
	Log string
	// Foreground serves in this process instead of a daemon.
	Foreground bool

	// Image is the name of the image the lowers come from, when mounted
	// with --image; Store is its image store.
	Image, Store string
	// containerDir is the store's directory of an image mount, locked
	// while mounted; container is that directory when it holds no
	// container layer and goes when the mount ends (image.go).
	containerDir, container string
}

// NewOptions returns the defaults for the calling user: as root, the mount
// is shared (allow_other) and the kernel checks permissions
// (default_permissions), as for kernel overlayfs; otherwise the union's
// xattrs live in user.*, since trusted.* needs root.
func NewOptions() *Options {
	root := os.Geteuid() == 0
	return &Options{
		Cache:              fs.DefaultCache,
		AllowOther:         root,
		DefaultPermissions: root,
		UserXattr:          !root,
	}
}

// Parse fills o from the positional arguments and the values of every -o
// flag, applied in order on top of what o holds. args may end with
// "-o OPTS" pairs, since mount.fuse3 puts them after the directories.
func (o *Options) Parse(args []string, mountOpts []string) error {
	pos, trailing, err := splitTrailingOptions(args)
	if err != nil {
		return err
	}
	var lowerdir, upperdir string
	var haveLowerdir bool
	for _, s := range append(append([]string(nil), mountOpts...), trailing...) {
		for _, opt := range splitOptions(s) {
			key, val, hasVal := strings.Cut(opt, "=")
			switch {
			case key == "lowerdir" && hasVal:
				lowerdir, haveLowerdir = val, true
			case key == "upperdir" && hasVal:
				upperdir = unescape(val)
			case key == "workdir" && hasVal:
				o.Work = unescape(val)
			case key == "fsname" && hasVal:
				o.FsName = val
			case key == "timeout" && hasVal:
				secs, err := strconv.ParseFloat(val, 64)
				if err != nil || secs < 0 || secs > 1e9 {
					return fmt.Errorf("mount option %q: want a number of seconds", opt)
				}
				o.Cache.Timeout = time.Duration(secs * float64(time.Second))
			case key == "log" && hasVal:
				o.Log = unescape(val)
			case key == "passthrough" && hasVal:
				no, err := off(opt, val)
				if err != nil {
					return err
				}
				o.Cache.Passthrough = fs.PassthroughOn
				if no {
					o.Cache.Passthrough = fs.PassthroughOff
				}
			case key == "metacopy" && hasVal:
				if o.NoMetacopy, err = off(opt, val); err != nil {
					return err
				}
			case hasVal:
				if !ignoredValue[key] && !strings.HasPrefix(key, "x-") {
					return fmt.Errorf("unknown mount option %q", opt)
				}
			default:
				if err := o.setFlag(key); err != nil {
					return err
				}
			}
		}
	}

	var lowers string
	switch {
	case o.Image != "" && haveLowerdir:
		return fmt.Errorf("--image %s and lowerdir= given together", o.Image)
	case o.Image != "" && len(pos) == 1:
		o.Mountpoint = pos[0]
	case o.Image != "" && len(pos) == 2:
		upperdir, o.Mountpoint = pos[0], pos[1]
	case o.Image != "":
		return fmt.Errorf("with --image, expected [UPPER] MERGED, got %d arguments", len(pos))
	case haveLowerdir && len(pos) == 1:
		lowers, o.Mountpoint = lowerdir, pos[0]
	case haveLowerdir && len(pos) == 2:
		// mount.fuse3 passes the fstab source first; fuse-overlayfs
		// ignores it too, apart from showing it in /proc/mounts.
		lowers, o.Mountpoint = lowerdir, pos[1]
		if o.FsName == "" {
			o.FsName = pos[0]
		}
	case haveLowerdir:
		return fmt.Errorf("with -o lowerdir=, expected [SOURCE] MERGED, got %d arguments", len(pos))
	case len(pos) == 2:
		lowers, o.Mountpoint = pos[0], pos[1]
	case len(pos) == 3:
		if upperdir != "" {
			return fmt.Errorf("upper directory given twice: %s and upperdir=%s", pos[1], upperdir)
		}
		lowers, upperdir, o.Mountpoint = pos[0], pos[1], pos[2]
	case len(pos) < 2:
		return errors.New("missing arguments: expected LOWER[:LOWER...] [UPPER] MERGED (see --help)")
	default:
		return fmt.Errorf("too many arguments: expected LOWER[:LOWER...] [UPPER] MERGED, got %d", len(pos))
	}
	o.Upper = upperdir
	if o.Image == "" {
		if o.Lowers, err = SplitLowers(lowers); err != nil {
			return err
		}
	}
	if o.Upper == "" && o.Work != "" {
		return fmt.Errorf("workdir %s given without an upper directory", o.Work)
	}
	return nil
}

// setFlag applies a mount option that has no value.
func (o *Options) setFlag(name string) error {
	switch name {
	case "ro":
		o.ReadOnly = true
	case "rw":
		o.ReadOnly = false
	case "allow_other":
		o.AllowOther = true
	case "default_permissions":
		o.DefaultPermissions = true
	case "userxattr":
		o.UserXattr = true
	case "volatile":
		o.Volatile = true
	case "debug":
		o.Debug = true
	default:
		if !ignoredFlag[name] {
			return fmt.Errorf("unknown mount option %q", name)
		}
	}
	return nil
}

// ignoredFlag lists the generic mount(8) and mount.fuse3 options that make
// no difference to a union; they are accepted so that fstab lines and
// mount(8) work. mount.fuse3 adds dev and suid itself when run by root.
var ignoredFlag = map[string]bool{
	"defaults": true, "auto": true, "noauto": true, "nofail": true,
	"_netdev": true, "user": true, "nouser": true, "users": true,
	"owner": true, "group": true,
	"dev": true, "nodev": true, "suid": true, "nosuid": true,
	"exec": true, "noexec": true,
	"atime": true, "noatime": true, "relatime": true, "norelatime": true,
	"strictatime": true, "nostrictatime": true, "lazytime": true,
	"nolazytime": true, "diratime": true, "nodiratime": true,
	"sync": true, "async": true, "dirsync": true,
	"silent": true, "loud": true, "mand": true, "nomand": true,
}

// ignoredValue lists the key=value options that are accepted and ignored,
// besides the x-* options of userspace tools.
var ignoredValue = map[string]bool{
	"subtype": true, "comment": true,
}

// splitTrailingOptions separates the positional arguments from the
// "-o OPTS" (or "-oOPTS") pairs that follow them.
func splitTrailingOptions(args []string) (pos, opts []string, err error) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "-o" || a == "--options":
			if i+1 == len(args) {
				return nil, nil, fmt.Errorf("%s needs a value", a)
			}
			opts = append(opts, args[i+1])
			i++
		case strings.HasPrefix(a, "-o"):
			opts = append(opts, a[2:])
		case strings.HasPrefix(a, "-") && len(a) > 1:
			return nil, nil, fmt.Errorf("flag %s must come before the directories", a)
		default:
			pos = append(pos, a)
		}
	}
	return pos, opts, nil
}

// splitOptions splits a mount(8) option string at the commas that are not
// escaped by a backslash. "\," becomes a comma; other escapes are kept for
// the value's own parser.
func splitOptions(s string) []string {
	var opts []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\' && i+1 < len(s):
			if s[i+1] != ',' {
				cur.WriteByte(c)
			}
			cur.WriteByte(s[i+1])
			i++
		case c == ',':
			if cur.Len() > 0 {
				opts = append(opts, cur.String())
			}
			cur.Reset()
		default:
			cur.WriteByte(c)
		}
	}
	if cur.Len() > 0 {
		opts = append(opts, cur.String())
	}
	return opts
}

// SplitLowers splits a lowerdir list at the colons, top-most first, as
// kernel overlayfs does: "\:" is a colon inside a name and a backslash
// escapes any other character.
func SplitLowers(s string) ([]string, error) {
	var lowers []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\':
			if i+1 == len(s) {
				return nil, fmt.Errorf("lower directories %q end with a lone backslash", s)
			}
			cur.WriteByte(s[i+1])
			i++
		case ':':
			if cur.Len() == 0 {
				return nil, fmt.Errorf("empty lower directory in %q", s)
			}
			lowers = append(lowers, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(c)
		}
	}
	if cur.Len() == 0 {
		return nil, fmt.Errorf("empty lower directory in %q", s)
	}
	lowers = append(lowers, cur.String())
	if len(lowers) > MaxLowers {
		return nil, fmt.Errorf("too many lower directories: %d, at most %d", len(lowers), MaxLowers)
	}
	return lowers, nil
}

// JoinLowers is the inverse of SplitLowers.
func JoinLowers(lowers []string) string {
	r := strings.NewReplacer(`\`, `\\`, `:`, `\:`)
	escaped := make([]string, len(lowers))
	for i, l := range lowers {
		escaped[i] = r.Replace(l)
	}
	return strings.Join(escaped, ":")
}

// unescape drops the backslash of every "\x" pair in a path option.
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// off parses the value of an on/off mount option: whether it says off.
func off(opt, val string) (bool, error) {
	switch val {
	case "on":
		return false, nil
	case "off":
		return true, nil
	}
	return false, fmt.Errorf("mount option %q: want on or off", opt)
}
