package debian

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"strings"

	"github.com/gondolin/gondolin/internal/kmod"
)

// The initramfs is written by hand in the newc format rather than with
// github.com/cavaliergopher/cpio, whose writer cannot set a device node's
// rdev numbers: /dev/console (5, 1) must be in the archive because the
// kernel opens it before /init can mount devtmpfs.

// cpioEntry is one file of the initramfs.
type cpioEntry struct {
	name                 string // relative, no leading slash
	mode                 uint32 // type and permission bits, as in st_mode
	data                 []byte // regular file content (small files)
	src                  string // or: a host file to copy
	rdevMajor, rdevMinor uint32
}

// st_mode type bits.
const (
	sIFDIR = 0o040000
	sIFREG = 0o100000
	sIFCHR = 0o020000
)

// initramfsEntries lays out the initramfs: the agent as /init, the
// directories it mounts on, the console, the modules and their index.
func initramfsEntries(agent string, ix kmod.Index, mods []moduleFile) ([]cpioEntry, error) {
	index, err := json.MarshalIndent(ix, "", "  ")
	if err != nil {
		return nil, err
	}
	entries := []cpioEntry{
		{name: "init", mode: sIFREG | 0o755, src: agent},
		{name: "dev", mode: sIFDIR | 0o755},
		{name: "dev/console", mode: sIFCHR | 0o600, rdevMajor: 5, rdevMinor: 1},
		{name: "newroot", mode: sIFDIR | 0o755},
		{name: "proc", mode: sIFDIR | 0o555},
		{name: "sys", mode: sIFDIR | 0o555},
		{name: "run", mode: sIFDIR | 0o755},
		{name: "tmp", mode: sIFDIR | 0o1777},
		{name: "lib/modules/" + kmod.IndexFile, mode: sIFREG | 0o644, data: append(index, '\n')},
	}
	for _, m := range mods {
		entries = append(entries, cpioEntry{name: path.Join("lib/modules", ix.Release, m.Path), mode: sIFREG | 0o644, src: m.src})
	}
	// Every parent directory, once.
	have := map[string]bool{}
	for _, e := range entries {
		have[e.name] = true
	}
	for _, e := range slices.Clone(entries) {
		for dir := path.Dir(e.name); dir != "."; dir = path.Dir(dir) {
			if !have[dir] {
				have[dir] = true
				entries = append(entries, cpioEntry{name: dir, mode: sIFDIR | 0o755})
			}
		}
	}
	// Sorted by name: parents come before children, and the same inputs
	// always give the same bytes.
	slices.SortFunc(entries, func(a, b cpioEntry) int { return strings.Compare(a.name, b.name) })
	return entries, nil
}

// writeCpio writes entries as an uncompressed newc archive with every
// file owned by root and a fixed mtime.
func writeCpio(w io.Writer, entries []cpioEntry) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	var off int64
	write := func(b []byte) error {
		n, err := bw.Write(b)
		off += int64(n)
		return err
	}
	pad := func() error {
		return write(make([]byte, (4-off%4)%4))
	}
	header := func(ino int, e cpioEntry, size int64, nlink int) error {
		h := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
			ino, e.mode, 0, 0, nlink, 0, size, 0, 0, e.rdevMajor, e.rdevMinor, len(e.name)+1, 0)
		if err := write([]byte(h + e.name + "\x00")); err != nil {
			return err
		}
		return pad()
	}
	for i, e := range entries {
		var size int64
		var f *os.File
		switch {
		case e.src != "":
			var err error
			if f, err = os.Open(e.src); err != nil {
				return err
			}
			st, err := f.Stat()
			if err != nil {
				f.Close()
				return err
			}
			size = st.Size()
		default:
			size = int64(len(e.data))
		}
		nlink := 1
		if e.mode&sIFDIR != 0 {
			nlink = 2
		}
		if size > 0xffffffff {
			return fmt.Errorf("initramfs: %s is too big for cpio", e.name)
		}
		err := header(i+1, e, size, nlink)
		if err == nil && f != nil {
			var n int64
			n, err = io.Copy(bw, f)
			off += n
			if err == nil && n != size {
				err = fmt.Errorf("initramfs: %s changed size while being written", e.src)
			}
		} else if err == nil {
			err = write(e.data)
		}
		if f != nil {
			f.Close()
		}
		if err == nil {
			err = pad()
		}
		if err != nil {
			return err
		}
	}
	if err := header(0, cpioEntry{name: "TRAILER!!!"}, 0, 1); err != nil {
		return err
	}
	return bw.Flush()
}

// writeInitramfs writes the initramfs file at path.
func writeInitramfs(path, agent string, ix kmod.Index, mods []moduleFile) error {
	entries, err := initramfsEntries(agent, ix, mods)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if err := writeCpio(f, entries); err != nil {
		f.Close()
		return fmt.Errorf("write initramfs: %w", err)
	}
	return f.Close()
}
