package mounts

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/gondolin/gondolin/mounts/fsproto"
	"golang.org/x/sys/unix"
)

// TestHandleLimit: a guest that opens files without end runs out of
// handles (EMFILE) well before the supervisor runs out of descriptors,
// and another VM's mounts keep working.
func TestHandleLimit(t *testing.T) {
	// vmBudget is the most descriptors one VM may take from the
	// supervisor, which serves every VM in one process with a limit that
	// can be as low as 20,000: several VMs at their bound must fit.
	const vmBudget = 4096
	dirA, specA := hostDir(t, "/a", true)
	dirB, specB := hostDir(t, "/b", true)
	os.WriteFile(filepath.Join(dirA, "f"), []byte("a"), 0o644)
	os.WriteFile(filepath.Join(dirB, "f"), []byte("b"), 0o644)
	_, ca := serve(t, specA)
	_, cb := serve(t, specB)
	a := fsproto.Mount{C: ca, ID: specA.ID}
	b := fsproto.Mount{C: cb, ID: specB.ID}
	ctx := ctxT(t)

	before := openFDs(t)
	var handles []uint64
	for i := range 2 * vmBudget {
		var h uint64
		var errno syscall.Errno
		if i%2 == 0 {
			h, _, errno = a.Open(ctx, "f", unix.O_RDONLY)
		} else {
			h, errno = a.Opendir(ctx, "")
		}
		if errno == syscall.EMFILE {
			break
		}
		mustOK(t, "open", errno)
		handles = append(handles, h)
	}
	if held := openFDs(t) - before; held > vmBudget {
		t.Fatalf("one VM took %d descriptors with %d handles open; want at most %d", held, len(handles), vmBudget)
	}
	if len(handles) != MaxHandles {
		t.Fatalf("the VM held %d handles before EMFILE, want %d", len(handles), MaxHandles)
	}
	_, _, errno := a.Open(ctx, "f", unix.O_RDONLY)
	wantErrno(t, "open beyond the limit", errno, syscall.EMFILE)
	_, errno = a.Opendir(ctx, "")
	wantErrno(t, "opendir beyond the limit", errno, syscall.EMFILE)

	// Another VM is not affected.
	h, _, errno := b.Open(ctx, "f", unix.O_RDONLY)
	mustOK(t, "open in another VM", errno)
	b.Release(ctx, h)

	// A released handle can be used again.
	mustOK(t, "release", a.Release(ctx, handles[0]))
	h, _, errno = a.Open(ctx, "f", unix.O_RDONLY)
	mustOK(t, "open after a release", errno)
	a.Release(ctx, h)
	for _, h := range handles[1:] {
		a.Release(ctx, h)
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count descriptors: %v", err)
	}
	return len(fds)
}
