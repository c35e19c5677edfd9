package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/unionmount/unionmount/layer"
	"github.com/unionmount/unionmount/mount"
	"github.com/unionmount/unionmount/store"
)

var commitCommand = &cli.Command{
	Name:      "commit",
	Usage:     "freeze the upper into a new read-only layer",
	ArgsUsage: "MERGED | LOWER[:LOWER...] UPPER",
	Description: `Freezes the changes in the upper into a new read-only layer, as docker commit
turns a container into an image. With MERGED, a live unionmount mount, the
mount keeps running: the new layer goes on top of its lowers, the upper
starts empty, and programs using the mount see no change, only a short wait.
Files open for writing keep working; what they write after the commit goes
to the new upper, never into the frozen layer.

With LOWER... UPPER, an upper that is not mounted (written by unionmount,
kernel overlayfs or fuse-overlayfs) is committed the same way.

The layer is kept as WORK/layers/N (N = 1, 2, ...) in the upper's work
directory, and every later mount of the same upper stacks it again. Its id
is the sha256 of its canonical OCI layer tar, so the same changes always get
the same id. Prints the id and how long writers were held.

Examples:
   unionmount commit /mnt/merged -m "install the app"
   unionmount commit /srv/base /srv/changes`,
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "message", Aliases: []string{"m"}, Usage: "commit message"},
		&cli.StringFlag{Name: "author", Aliases: []string{"a"}, Usage: "author"},
		&cli.StringFlag{Name: "workdir", Aliases: []string{"w"}, Usage: "work directory of an unmounted upper (default: DIR/.NAME.work)"},
		&cli.BoolFlag{Name: "userxattr", DisableDefaultText: true, Usage: "an unmounted upper keeps the union's xattrs in user.* (default when not root)"},
		&cli.StringFlag{Name: "tag", Aliases: []string{"t"}, Usage: "also store the mount as image `NAME[:TAG]`: its image's layers (or one per lower directory) and the committed ones"},
		storeFlag,
	},
	Action: func(c *cli.Context) error {
		o := mount.CommitOptions{Message: c.String("message"), Author: c.String("author"), Progress: progress("hashing")}
		var res *mount.Committed
		var err error
		switch {
		case c.NArg() == 1 && c.String("tag") != "":
			var img *store.Image
			res, img, err = mount.CommitImage(c.Args().First(), c.String("tag"), c.String("store"), o)
			endProgress()
			if err != nil {
				if res != nil {
					return fmt.Errorf("committed %s as %s, but not stored as an image: %w", c.Args().First(), res.Meta.ID, err)
				}
				return err
			}
			fmt.Println(res.Meta.ID)
			fmt.Fprintf(os.Stderr, "committed %s; writers held %s; image %s (%s)\n",
				res.Dir, res.Meta.Held.Round(time.Microsecond), img.Name, img.ID())
			return nil
		case c.NArg() == 1:
			res, err = mount.CommitMount(c.Args().First(), o)
		case c.NArg() == 2 && c.String("tag") != "":
			return usageError(c, "--tag needs a live mount: commit it offline, mount it, then commit --tag")
		case c.NArg() == 2:
			lowers, lerr := mount.SplitLowers(c.Args().Get(0))
			if lerr != nil {
				return lerr
			}
			upper := c.Args().Get(1)
			work := c.String("workdir")
			if work == "" {
				abs, aerr := filepath.Abs(upper)
				if aerr != nil {
					return aerr
				}
				work = mount.DefaultWork(abs)
			}
			userXattr := c.Bool("userxattr") || os.Geteuid() != 0
			res, err = mount.CommitUpper(lowers, upper, work, userXattr, o)
		default:
			return usageError(c, "expected MERGED, or LOWER[:LOWER...] UPPER")
		}
		endProgress()
		if err != nil {
			return err
		}
		fmt.Println(res.Meta.ID)
		fmt.Fprintf(os.Stderr, "committed %s: %d entries, %d files, %s; writers held %s\n",
			res.Dir, res.Meta.Entries, res.Meta.Files, humanSize(res.Meta.Size), res.Meta.Held.Round(time.Microsecond))
		return nil
	},
}

var diffCommand = &cli.Command{
	Name:      "diff",
	Usage:     "list the changes in the upper, as docker diff does",
	ArgsUsage: "MERGED | LOWER[:LOWER...] UPPER",
	Description: `Lists what the upper changes in the merged view, one path per line:
A added, C changed, D deleted. It reads the upper only (and, for an opaque
directory, the one lower directory it hides), never the lowers' whole trees.
After a commit the upper is empty again: diff shows the changes since.`,
	Action: func(c *cli.Context) error {
		var upper string
		var lowers []string
		switch c.NArg() {
		case 1:
			in, err := mount.MountInfo(c.Args().First())
			if err != nil {
				return err
			}
			if in.Upper == "" {
				return fmt.Errorf("%s is mounted read-only: it has no upper", in.Mountpoint)
			}
			upper, lowers = in.Upper, in.Lowers
		case 2:
			var err error
			if lowers, err = mount.SplitLowers(c.Args().Get(0)); err != nil {
				return err
			}
			upper = c.Args().Get(1)
		default:
			return usageError(c, "expected MERGED, or LOWER[:LOWER...] UPPER")
		}
		changes, err := layer.Changes(upper, lowers)
		if err != nil {
			return err
		}
		var b strings.Builder
		for _, ch := range changes {
			fmt.Fprintf(&b, "%c %s\n", ch.Kind, ch.Path)
		}
		_, err = os.Stdout.WriteString(b.String())
		return err
	},
}

var layersCommand = &cli.Command{
	Name:      "layers",
	Usage:     "list the layers of a mount, top-most first",
	ArgsUsage: "MERGED",
	Description: `Lists the layers of the unionmount mount on MERGED, top-most first: the
upper, the committed layers (id, message, creation time) and the lowers.
FILES and SIZE count regular files and their bytes.`,
	Action: func(c *cli.Context) error {
		if c.NArg() != 1 {
			return usageError(c, "expected one argument, MERGED")
		}
		ls, err := mount.ListLayers(c.Args().First())
		if err != nil {
			return err
		}
		w := tabwriter.NewWriter(os.Stdout, 0, 8, 2, ' ', 0)
		fmt.Fprintln(w, "LAYER\tID\tFILES\tSIZE\tCREATED\tMESSAGE\tDIRECTORY")
		for _, l := range ls {
			id := "-"
			if l.Meta.ID != "" {
				id = shortID(l.Meta.ID)
			}
			created := "-"
			if !l.Meta.Created.IsZero() {
				created = l.Meta.Created.Local().Format("2006-01-02 15:04:05")
			}
			msg := l.Meta.Message
			if msg == "" {
				msg = "-"
			}
			fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", l.Role, id, l.Meta.Files, humanSize(l.Meta.Size), created, msg, l.Dir)
		}
		return w.Flush()
	},
}

var whichCommand = &cli.Command{
	Name:      "which",
	Usage:     "name the layer that serves a path, or what hides it",
	ArgsUsage: "PATH...",
	Description: `For each PATH inside a unionmount mount, names the layer directory that
serves it (for a directory, also the lower directories merged into it), or,
for a path that a lower has but the merged view hides, the whiteout or
opaque directory that hides it.`,
	Action: func(c *cli.Context) error {
		if c.NArg() == 0 {
			return usageError(c, "expected PATH...")
		}
		for _, p := range c.Args().Slice() {
			src, err := mount.Which(p)
			if err != nil {
				return err
			}
			switch {
			case src.Hidden:
				fmt.Printf("%s: hidden by the %s %s in %s (it is in %s)\n", p, src.By, src.At, src.Layer, src.Below)
			case src.Metacopy && src.Data == "":
				fmt.Printf("%s: metadata in %s, data missing (no layer below has %s)\n", p, src.Layer, src.DataPath)
			case src.Metacopy:
				fmt.Printf("%s: metadata in %s, data in %s\n", p, src.Layer, filepath.Join(src.Data, src.DataPath))
			case src.Index:
				fmt.Printf("%s: %s (a hard link shown through the link index)\n", p, src.Layer)
			case len(src.Merged) > 0:
				fmt.Printf("%s: %s, merged with %s\n", p, src.Layer, strings.Join(src.Merged, ", "))
			default:
				fmt.Printf("%s: %s\n", p, src.Layer)
			}
		}
		return nil
	},
}

// shortID is the first 12 hex digits of a digest, as docker shows ids.
func shortID(id string) string {
	id = strings.TrimPrefix(id, "sha256:")
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// humanSize formats n bytes as docker does (1000-based).
func humanSize(n int64) string {
	units := []string{"B", "kB", "MB", "GB", "TB"}
	f := float64(n)
	i := 0
	for f >= 1000 && i < len(units)-1 {
		f /= 1000
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%dB", n)
	}
	return fmt.Sprintf("%.3g%s", f, units[i])
}
