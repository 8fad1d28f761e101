package agentproto

// Kernel command line parameters the host passes to the agent, which runs
// as the guest's init and reads them from /proc/cmdline.
const (
	ParamRoot       = "gondolin.root"       // block device holding the root filesystem
	ParamRootFSType = "gondolin.rootfstype" // its filesystem type (default ext4)
	ParamDebug      = "gondolin.debug"      // log boot timings to the console
)

// CheckArg, as the agent binary's only argument, makes it print "ok" and
// exit: a command every guest can run (as /proc/1/exe), whatever its
// image holds, which the host runs to check a restored template.
const CheckArg = "-gondolin-check"
