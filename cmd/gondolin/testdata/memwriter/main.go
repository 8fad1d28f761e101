// Command memwriter keeps rewriting a block of memory with a known,
// changing pattern, and a few pages of it all the time, and checks every
// word before it overwrites it. Run in a guest while its state is saved,
// and again in each restored copy, it finds any word the save lost. It also appends each finished pass to a
// log on disk, so a checker can tell that RAM and disk were saved at the
// same instant.
//
//	memwriter [KiB [churn]]   (default 256 KiB)
//
// With churn, it also keeps the Go runtime's heap, timers and locks busy
// and polls the VM's unused file port, as the guest agent does between
// hosts, and sleeps between bumps: a guest that is mostly idle but
// never quiet.
//
// Keep the block small: pages a CPU keeps writing stay in its TLB, and
// that is where a save that tracks dirty pages badly loses writes (QEMU
// 7.2 under TCG, see vm/state.go); a block larger than the TLB reaches
// would evict its own entries and hide it.
//
// It writes "gen N ok" to /tmp/memwriter.status after every pass, or
// "BAD ..." and exits 1 at the first word that is not what it wrote.
package main

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

const (
	statusFile = "/tmp/memwriter.status"
	logFile    = "/root/memwriter.log"
	hotPath    = "/dev/shm/memwriter.hot"
)

func main() {
	kib := 256
	if len(os.Args) > 1 {
		if n, err := strconv.Atoi(os.Args[1]); err == nil && n > 0 {
			kib = n
		}
	}
	churning := len(os.Args) > 2 && os.Args[2] == "churn"
	if churning {
		// The Go runtime's own heap, timers and locks as well, as in an
		// idle Go server: a lost write there is a runtime fatal error.
		for range 8 {
			go churn()
		}
		go pollPort()
	}
	words := make([]uint64, kib<<10/8)
	log, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		fail("open log: %v", err)
	}
	// A few pages are rewritten more often still, in this process and
	// by the kernel (a tmpfs file written with pwrite).
	hot := make([]uint64, 16<<10/8)
	hotFile, err := os.OpenFile(hotPath, os.O_CREATE|os.O_RDWR|os.O_TRUNC, 0o644)
	if err != nil {
		fail("open %s: %v", hotPath, err)
	}
	page := make([]byte, 16<<10)
	var bumps, fileGen uint64
	// Pass g writes g<<32|i into word i; before that, word i holds
	// (g-1)<<32|i (zero before the first pass).
	for gen := uint64(1); ; gen++ {
		for i := range words {
			want := uint64(0)
			if gen > 1 {
				want = (gen-1)<<32 | uint64(i)
			}
			if words[i] != want {
				fail("BAD pass %d word %d: %#x, want %#x", gen, i, words[i], want)
			}
			words[i] = gen<<32 | uint64(i)
			if i%1024 == 0 {
				for k := range hot {
					if hot[k] != bumps {
						fail("BAD hot word %d: %d, want %d", k, hot[k], bumps)
					}
					hot[k] = bumps + 1
				}
				if i%8192 == 0 {
					checkFile(hotFile, page, &fileGen)
				}
				bumps++
				if churning {
					time.Sleep(time.Millisecond)
				}
			}
		}
		if _, err := fmt.Fprintf(log, "gen %d\n", gen); err != nil {
			fail("BAD log: %v", err)
		}
		status(fmt.Sprintf("gen %d ok\n", gen))
	}
}

// checkFile checks that every word of f holds *gen (f is empty while
// *gen is 0), then writes *gen+1 into every word.
func checkFile(f *os.File, page []byte, gen *uint64) {
	n, err := f.ReadAt(page, 0)
	switch {
	case *gen == 0 && n != 0:
		fail("BAD %s: %d bytes before the first write", hotPath, n)
	case *gen > 0 && n != len(page):
		fail("BAD read %s: %d bytes, %v", hotPath, n, err)
	}
	for k := 0; k+8 <= n; k += 8 {
		if got := binary.LittleEndian.Uint64(page[k:]); got != *gen {
			fail("BAD %s word %d: %d, want %d", hotPath, k/8, got, *gen)
		}
	}
	*gen++
	for k := 0; k+8 <= len(page); k += 8 {
		binary.LittleEndian.PutUint64(page[k:], *gen)
	}
	if _, err := f.WriteAt(page, 0); err != nil {
		fail("BAD write %s: %v", hotPath, err)
	}
}

// pollPort opens, reads and closes the VM's unused file port every few
// milliseconds, as the guest agent does while no host is connected: each
// round trip runs the kernel's virtio console driver.
func pollPort() {
	dirs, _ := filepath.Glob("/sys/class/virtio-ports/*")
	for _, dir := range dirs {
		if b, err := os.ReadFile(filepath.Join(dir, "name")); err == nil && strings.TrimSpace(string(b)) == "org.gondolin.fs" {
			dev := "/dev/" + filepath.Base(dir)
			buf := make([]byte, 4096)
			for {
				if f, err := os.OpenFile(dev, os.O_RDWR, 0); err == nil {
					f.Read(buf)
					f.Close()
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
	}
}

// churn allocates, links and frees small objects with short sleeps.
func churn() {
	var keep [][]byte
	for i := 0; ; i++ {
		keep = append(keep, make([]byte, 64+i%4096))
		if len(keep) > 256 {
			keep = keep[128:]
		}
		if i%16 == 0 {
			time.Sleep(500 * time.Microsecond)
		}
	}
}

func status(s string) {
	tmp := statusFile + ".tmp"
	if os.WriteFile(tmp, []byte(s), 0o644) == nil {
		os.Rename(tmp, statusFile)
	}
}

func fail(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	status(msg + "\n")
	fmt.Fprintln(os.Stderr, msg)
	os.Exit(1)
}
