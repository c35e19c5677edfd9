package main

import (
	"github.com/urfave/cli/v2"

	"github.com/unionmount/unionmount/mount"
)

var umountCommand = &cli.Command{
	Name:      "umount",
	Aliases:   []string{"unmount"},
	Usage:     "unmount a unionmount mount",
	ArgsUsage: "MERGED",
	Description: `Unmounts the unionmount mount on MERGED; its daemon then exits. As root
this is umount(2), otherwise fusermount3 -u. MERGED must be a unionmount mount.
umount(8) and fusermount3 -u work as well.

Examples:
   unionmount umount /mnt/merged
   unionmount umount --lazy /mnt/merged`,
	Flags: []cli.Flag{
		&cli.BoolFlag{Name: "lazy", Aliases: []string{"l"}, DisableDefaultText: true, Usage: "detach a busy mount now, finish when it is no longer used"},
	},
	Action: func(c *cli.Context) error {
		if c.NArg() != 1 {
			return usageError(c, "expected one argument, MERGED")
		}
		return mount.Unmount(c.Args().First(), c.Bool("lazy"))
	},
}
