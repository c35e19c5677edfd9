package fs

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Mounting and unmounting a FUSE file system: the kernel's side of the
// connection that transport serves.
//
// Root mounts with mount(2), giving the kernel an open /dev/fuse in the
// fd= option (Documentation/filesystems/fuse.rst, "Mount options").
// Anyone else, or root where mount(2) is refused, asks fusermount3, the
// setuid helper of libfuse: it opens /dev/fuse, mounts, and passes the
// descriptor back over the socket named by _FUSE_COMMFD.

// mountFuse mounts at mountpoint and returns the /dev/fuse descriptor that
// serves the mount. mo gives the name, the source (FsName), allow_other,
// the options (default_permissions, ro, ...) and max_read (MaxWrite); with
// DirectMount root tries mount(2) first, with DirectMountFlags as its flags.
func mountFuse(mountpoint string, mo *fuse.MountOptions) (int, error) {
	if mo.DirectMount {
		fd, err := mountDirect(mountpoint, mo)
		if err == nil {
			return fd, nil
		}
		if !errors.Is(err, unix.EPERM) {
			return -1, err
		}
	}
	return mountHelper(mountpoint, mo)
}

func mountDirect(mountpoint string, mo *fuse.MountOptions) (int, error) {
	var st unix.Stat_t
	if err := unix.Stat(mountpoint, &st); err != nil {
		return -1, &os.PathError{Op: "stat", Path: mountpoint, Err: err}
	}
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: "/dev/fuse", Err: err}
	}
	flags := uintptr(unix.MS_NOSUID | unix.MS_NODEV)
	if mo.DirectMountFlags != 0 {
		flags = mo.DirectMountFlags
	}
	data := []string{
		fmt.Sprintf("fd=%d", fd),
		fmt.Sprintf("rootmode=%o", st.Mode&unix.S_IFMT),
		fmt.Sprintf("user_id=%d", os.Geteuid()),
		fmt.Sprintf("group_id=%d", os.Getegid()),
		fmt.Sprintf("max_read=%d", mo.MaxWrite),
	}
	if mo.AllowOther {
		data = append(data, "allow_other")
	}
	data = append(data, mo.Options...)
	if err := unix.Mount(source(mo), mountpoint, "fuse."+mo.Name, flags, strings.Join(data, ",")); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("mount(2): %w", err)
	}
	return fd, nil
}

func source(mo *fuse.MountOptions) string {
	if mo.FsName != "" {
		return mo.FsName
	}
	return mo.Name
}

func mountHelper(mountpoint string, mo *fuse.MountOptions) (int, error) {
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socketpair: %w", err)
	}
	ours := os.NewFile(uintptr(pair[0]), "fusermount3 socket")
	theirs := os.NewFile(uintptr(pair[1]), "fusermount3 socket")
	defer ours.Close()
	opts := []string{"fsname=" + escapeOption(source(mo)), "subtype=" + mo.Name, fmt.Sprintf("max_read=%d", mo.MaxWrite)}
	if mo.AllowOther {
		opts = append(opts, "allow_other")
	}
	for _, o := range mo.Options {
		opts = append(opts, escapeOption(o))
	}
	cmd := exec.Command("fusermount3", "-o", strings.Join(opts, ","), "--", mountpoint)
	cmd.Env = append(os.Environ(), "_FUSE_COMMFD=3")
	cmd.ExtraFiles = []*os.File{theirs} // fd 3
	cmd.Stderr = os.Stderr              // where fusermount3 explains a refusal
	err = cmd.Run()
	theirs.Close()
	if err != nil {
		return -1, fmt.Errorf("fusermount3: %w", err)
	}
	conn, err := net.FileConn(ours)
	if err != nil {
		return -1, fmt.Errorf("fusermount3 socket: %w", err)
	}
	defer conn.Close()
	var b [1]byte
	oob := make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := conn.(*net.UnixConn).ReadMsgUnix(b[:], oob)
	if err != nil {
		return -1, fmt.Errorf("receive /dev/fuse from fusermount3: %w", err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return -1, fmt.Errorf("receive /dev/fuse from fusermount3: no descriptor sent")
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		return -1, fmt.Errorf("receive /dev/fuse from fusermount3: no descriptor sent")
	}
	unix.CloseOnExec(fds[0])
	return fds[0], nil
}

// escapeOption escapes the commas and backslashes in one mount option, which
// fusermount3 would otherwise take for separators.
func escapeOption(o string) string {
	return strings.NewReplacer(`\`, `\\`, `,`, `\,`).Replace(o)
}

// Unmount unmounts the FUSE mount on dir: with umount(2) as root, with
// fusermount3 -u otherwise. A lazy unmount detaches a busy mount now and
// finishes once it is no longer used.
func Unmount(dir string, lazy bool) error {
	if os.Geteuid() == 0 {
		flags := 0
		if lazy {
			flags = unix.MNT_DETACH
		}
		if err := unix.Unmount(dir, flags); err != nil {
			if errors.Is(err, unix.EBUSY) {
				return fmt.Errorf("unmount %s: %w (try --lazy)", dir, err)
			}
			return fmt.Errorf("unmount %s: %w", dir, err)
		}
		return nil
	}
	args := []string{"-u", dir}
	if lazy {
		args = []string{"-u", "-z", dir}
	}
	out, err := exec.Command("fusermount3", args...).CombinedOutput()
	if err != nil {
		if msg := strings.TrimSpace(string(out)); msg != "" {
			return fmt.Errorf("unmount %s: %s", dir, msg)
		}
		return fmt.Errorf("unmount %s: fusermount3: %w", dir, err)
	}
	return nil
}

// unmountSoon is Unmount that tries again a few times over a third of a
// second while the mount is busy: a file closed just now may still count
// as open.
func unmountSoon(dir string) error {
	var err error
	delay := 5 * time.Millisecond
	for try := 0; try < 6; try++ {
		if err = Unmount(dir, false); err == nil {
			return nil
		}
		time.Sleep(delay)
		delay *= 2
	}
	return err
}
