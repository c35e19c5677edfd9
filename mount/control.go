package mount

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/cow"
)

// The control socket: a live mount answers the unionmount commands that
// need its daemon (commit, layers, which) on a unix socket named after the
// mount's device number, DEV.sock in the runtime directory. The directory
// is private to the user (0700), so only the mount's owner (or root) can
// talk to it. One request per connection, one JSON line each way.

// runtimeDir is where control sockets live: /run/unionmount for root,
// $XDG_RUNTIME_DIR/unionmount or /tmp/unionmount-UID otherwise.
func runtimeDir() string {
	if os.Geteuid() == 0 {
		return "/run/unionmount"
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "unionmount")
	}
	return filepath.Join(os.TempDir(), "unionmount-"+strconv.Itoa(os.Geteuid()))
}

// checkRuntimeDir refuses a runtime directory that is not a directory of
// our own that only we can enter: under /tmp another user could have made
// it first and put a socket of theirs in place of a daemon's.
func checkRuntimeDir() error { return checkPrivateDir(runtimeDir()) }

// checkPrivateDir refuses d unless it is a directory (not a symlink) owned
// by us with no access for others.
func checkPrivateDir(d string) error {
	var st unix.Stat_t
	if err := unix.Lstat(d, &st); err != nil {
		return &os.PathError{Op: "control socket directory", Path: d, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR || st.Uid != uint32(os.Geteuid()) || st.Mode&0o077 != 0 {
		return fmt.Errorf("control socket directory %s is not a private directory of uid %d (mode %o, owner %d)",
			d, os.Geteuid(), st.Mode&0o7777, st.Uid)
	}
	return nil
}

// socketPath names the control socket of the mount whose root has device
// number dev.
func socketPath(dev uint64) string {
	return filepath.Join(runtimeDir(), fmt.Sprintf("%d:%d.sock", unix.Major(dev), unix.Minor(dev)))
}

type request struct {
	Op string `json:"op"`
	// Path is the merged path of "which", relative to the mount point.
	Path string `json:"path,omitempty"`
}

type response struct {
	Error  string         `json:"error,omitempty"`
	Info   *Info          `json:"info,omitempty"`
	Commit *cow.Committed `json:"commit,omitempty"`
	Which  *cow.Source    `json:"which,omitempty"`
}

// Info describes a live mount.
type Info struct {
	Mountpoint string
	// Upper and Work are empty for a read-only mount.
	Upper, Work string
	// Lowers are all lower layers, top-most first: the committed ones
	// (in Work/layers), then the ones the mount was given.
	Lowers []string
	// Committed counts the committed layers at the top of Lowers.
	Committed int
	UserXattr bool
	// Image is the image the mount was made from, if any.
	Image string `json:",omitempty"`
	// Store is the image store of Image.
	Store string `json:",omitempty"`
	// PID is the daemon's process id.
	PID int
}

// serveControl listens on the mount's control socket until the returned
// stop is called.
func (u *Union) serveControl() (stop func(), err error) {
	var st unix.Stat_t
	if err := unix.Stat(u.opts.Mountpoint, &st); err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.MkdirAll(runtimeDir(), 0o700); err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := checkRuntimeDir(); err != nil {
		return nil, err
	}
	p := socketPath(st.Dev)
	// A socket left by a daemon that was killed: its device number is
	// ours now.
	_ = os.Remove(p)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: p, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	l.SetUnlinkOnClose(true)
	go func() {
		for {
			c, err := l.AcceptUnix()
			if err != nil {
				return
			}
			go u.answer(c)
		}
	}()
	return func() { l.Close() }, nil
}

// answer serves one request on c.
func (u *Union) answer(c *net.UnixConn) {
	defer c.Close()
	var req request
	if err := json.NewDecoder(bufio.NewReader(c)).Decode(&req); err != nil {
		return
	}
	var resp response
	switch req.Op {
	case "info":
		resp.Info = u.info()
	case "commit":
		cm, err := u.server.Commit()
		if err != nil {
			resp.Error = err.Error()
		} else {
			resp.Commit = &cm
		}
	case "which":
		src, err := u.which(req.Path)
		if err != nil {
			resp.Error = err.Error()
		} else {
			resp.Which = &src
		}
	default:
		resp.Error = fmt.Sprintf("unknown request %q", req.Op)
	}
	_ = json.NewEncoder(c).Encode(&resp)
}

func (u *Union) info() *Info {
	release := u.stack.Hold()
	defer release()
	upper, lowers, committed := u.stack.Layers()
	in := &Info{
		Mountpoint: u.opts.Mountpoint,
		Upper:      upper,
		Lowers:     lowers,
		Committed:  committed,
		UserXattr:  u.opts.UserXattr,
		Image:      u.opts.Image,
		Store:      u.opts.Store,
		PID:        os.Getpid(),
	}
	if upper != "" {
		in.Work = u.opts.Work
	}
	return in
}

func (u *Union) which(rel string) (cow.Source, error) {
	release := u.stack.Hold()
	defer release()
	return u.stack.Which(rel)
}

// call sends req to the daemon of the unionmount mount on mountpoint.
func call(mountpoint string, req request) (*response, error) {
	var st unix.Stat_t
	if err := unix.Stat(mountpoint, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", mountpoint, err)
	}
	if err := checkRuntimeDir(); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	p := socketPath(st.Dev)
	c, err := net.DialTimeout("unix", p, 5*time.Second)
	if err != nil {
		switch {
		case errors.Is(err, unix.ENOENT):
			return nil, fmt.Errorf("%s: no control socket %s (mounted by another user, or by an older unionmount?)", mountpoint, p)
		case errors.Is(err, unix.ECONNREFUSED):
			return nil, fmt.Errorf("%s: its daemon is gone (nobody listens on %s); unmount it with umount -l", mountpoint, p)
		}
		return nil, fmt.Errorf("%s: daemon: %w", mountpoint, err)
	}
	defer c.Close()
	if err := json.NewEncoder(c).Encode(&req); err != nil {
		return nil, fmt.Errorf("%s: daemon: %w", mountpoint, err)
	}
	var resp response
	if err := json.NewDecoder(bufio.NewReader(c)).Decode(&resp); err != nil {
		return nil, fmt.Errorf("%s: daemon: no answer: %w", mountpoint, err)
	}
	if resp.Error != "" {
		return nil, errors.New(resp.Error)
	}
	return &resp, nil
}
