package main

import (
	"github.com/urfave/cli/v2"

	"github.com/unionmount/unionmount/mount"
)

const mountUsage = "mount a union of directories, overlayfs style, with FUSE"

const mountUsageText = `unionmount [options] LOWER[:LOWER...] [UPPER] MERGED
unionmount [options] -o lowerdir=LOWER[:LOWER...][,upperdir=UPPER[,workdir=WORK]] [SOURCE] MERGED
unionmount [options] --image NAME [UPPER] MERGED
unionmount umount MERGED`

const mountDescription = `Mounts on MERGED the union of the LOWER directories, leftmost on top, and of
the writable UPPER directory above them all. Changes go to UPPER; the lowers
are never modified. Without UPPER, or with --read-only, the union is
read-only. In a LOWER list "\:" is a colon inside a name.

The command returns once the mount is live; the filesystem then runs in the
background until MERGED is unmounted with "umount MERGED",
"fusermount3 -u MERGED" or "unionmount umount MERGED". With --foreground it
stays attached and unmounts on Ctrl-C or SIGTERM.

The work directory must be on UPPER's filesystem. When none is given it is
DIR/.NAME.work next to the upper DIR/NAME, created on mount.

The -o form is fuse-overlayfs's, so mount(8) and fstab work:
   mount -t fuse.unionmount unionmount /mnt/merged -o lowerdir=/l1:/l2,upperdir=/u,workdir=/w
   fstab: unionmount /mnt/merged fuse.unionmount lowerdir=/l1:/l2,upperdir=/u,workdir=/w 0 0
Other -o options: ro, rw, allow_other, default_permissions, userxattr, debug, log=FILE,
fsname=NAME, timeout=SECONDS, volatile (no fsync at all, for throwaway uppers; an
upper whose volatile mount crashed is refused afterwards), metacopy=on|off (on by
default: chmod, chown, utimes and xattr changes of a file of 64 KiB or more copy
up only its metadata, in kernel overlayfs's metacopy format), passthrough=on|off (on:
as root the kernel reads and writes files in the upper itself, and every open goes
through the daemon; by default the kernel opens files itself wherever it checks
permissions, and passthrough is then off); generic mount options
(nodev, noatime, nofail, ...) are ignored.

As root, the mount is open to all users (allow_other) and the kernel checks
permissions (default_permissions). Other users mount through fusermount3,
and the union keeps its xattrs in user.* (userxattr).

Examples:
   unionmount /srv/base /srv/changes /mnt/merged
   unionmount /layers/app:/layers/os /mnt/ro
   unionmount -o lowerdir=/layers/app:/layers/os,upperdir=/srv/up,workdir=/srv/work /mnt/merged
   unionmount -f --debug /srv/base /srv/changes /mnt/merged`

var mountFlags = []cli.Flag{
	&cli.StringSliceFlag{
		Name:    "options",
		Aliases: []string{"o"},
		Usage:   "mount(8) options, comma separated: lowerdir=, upperdir=, workdir=, ro, allow_other, ...",
	},
	&cli.StringFlag{
		Name:    "workdir",
		Aliases: []string{"w"},
		Usage:   "work directory on the upper's filesystem (default: DIR/.NAME.work next to the upper)",
	},
	&cli.BoolFlag{Name: "read-only", Aliases: []string{"r"}, DisableDefaultText: true, Usage: "mount read-only; an upper is shown but not written"},
	&cli.BoolFlag{Name: "foreground", Aliases: []string{"f"}, DisableDefaultText: true, Usage: "stay in the foreground; unmount on SIGINT or SIGTERM"},
	&cli.BoolFlag{Name: "debug", Aliases: []string{"d"}, DisableDefaultText: true, Usage: "log every FUSE request (to stderr with --foreground, else to --log)"},
	&cli.StringFlag{Name: "log", Usage: "once in the background, append diagnostics to `FILE` (default: discard them)"},
	&cli.BoolFlag{Name: "allow-other", DisableDefaultText: true, Usage: "let other users use the mount (default as root)"},
	&cli.BoolFlag{Name: "no-allow-other", DisableDefaultText: true, Usage: "only the mounting user may use the mount"},
	&cli.BoolFlag{Name: "default-permissions", DisableDefaultText: true, Usage: "let the kernel check permissions (default as root)"},
	&cli.BoolFlag{Name: "no-default-permissions", DisableDefaultText: true, Usage: "do not ask the kernel to check permissions"},
	&cli.BoolFlag{Name: "userxattr", DisableDefaultText: true, Usage: "keep the union's xattrs in user.* (default when not root)"},
	&cli.StringFlag{Name: "image", Aliases: []string{"i"}, Usage: "mount the layers of image `NAME` from the store as the lowers; without UPPER, in a fresh container layer"},
	storeFlag,
}

func mountAction(c *cli.Context) error {
	o := mount.NewOptions()
	o.Foreground = c.Bool("foreground")
	o.ReadOnly = c.Bool("read-only")
	o.Debug = c.Bool("debug")
	o.Log = c.String("log")
	o.Work = c.String("workdir")
	o.AllowOther = (o.AllowOther || c.Bool("allow-other")) && !c.Bool("no-allow-other")
	o.DefaultPermissions = (o.DefaultPermissions || c.Bool("default-permissions")) && !c.Bool("no-default-permissions")
	o.UserXattr = o.UserXattr || c.Bool("userxattr")
	o.Image = c.String("image")
	o.Store = c.String("store")
	if err := o.Parse(c.Args().Slice(), c.StringSlice("options")); err != nil {
		return err
	}
	return mount.Run(o)
}
