// Package ui is gondolin's dashboard: a full-screen Bubble Tea program
// that lists every session, previews and attaches to their terminals,
// creates, stops and removes sessions, and (where the supervisor offers
// them) edits network policy and takes snapshots. It talks to each
// supervisor it shows (this machine's, and those of contexts on other
// machines: its hosts) only through a Backend, normally a
// *sessions.Client.
package ui

import (
	"cmp"
	"context"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"charm.land/bubbles/v2/textinput"
	tea "charm.land/bubbletea/v2"
	"github.com/gondolin/gondolin/internal/termsafe"
	"github.com/gondolin/gondolin/sessions"
	"github.com/gondolin/gondolin/vm"
)

// AttachFunc joins the user's terminal to a session's terminal until the
// user detaches; sessions.AttachTerminal with a client is one.
type AttachFunc func(ctx context.Context, ref string, pty uint64, in, out *os.File) (sessions.AttachResult, error)

// Options tune a dashboard.
type Options struct {
	// Attach runs the full-screen attach behind Enter; nil: Enter says
	// attaching is not available.
	Attach AttachFunc
	// UsageRefresh re-lists sessions at this interval while any is live,
	// only to update the CPU and memory columns: the supervisor measures
	// them when asked and sends no event for them. 0: never.
	UsageRefresh time.Duration
	// DefaultImage prefills the new-session form.
	DefaultImage string
	// Host prefills the new-session form's host (with several hosts);
	// empty or unknown: the first.
	Host string
	// Now is the clock for uptimes (tests pin it).
	Now func() time.Time
}

// Model is the dashboard's state. It is a tea.Model.
type Model struct {
	// hosts are the supervisors shown, the default host (whose status
	// the title shows) first. Each is listed and followed on its own, so
	// that one slow or dead host never holds up the others.
	hosts []*host
	opts  Options
	ctx   context.Context
	st    styles

	width, height int

	all      []row  // as listed, newest first
	visible  []int  // indexes into all that pass the filter
	cursor   int    // index into visible
	offset   int    // first visible row in the table
	selected string // selected row's key, kept across refreshes
	// picked: the user (or an action of theirs) chose the selection.
	// Until then the top row is selected, whichever host answers first.
	picked bool

	// Summaries of the hosts' states (see summarize): loaded, a list
	// has come in (with one host, a good one); listErr, the one host's
	// list failed; listing, some host's list is in flight; eventsUp,
	// every host's events are followed; eventsNote, why one is not.
	loaded     bool
	listErr    error
	listing    bool
	eventsUp   bool
	eventsNote string

	ptyChoice map[string]uint64 // the terminal previewed per row key

	// creates counts this dashboard's creates and resumes in flight:
	// while there is one, a session that shows up being made is
	// selected, so the user sees what it is doing.
	creates int

	preview preview
	// fetching holds the terminals (previewKey) whose screen request is
	// in flight: one each, so that a host whose answer is slow holds up
	// only its own rows' previews, never another host's.
	fetching  map[string]bool
	wantFetch bool // the current terminal's preview is out of date

	filter    textinput.Model
	filtering bool

	dialog dialog

	status    string
	statusErr bool
	statusID  int

	// templateNote says what is wrong with a template (being rebuilt,
	// broken), from the supervisor's status; empty when all is well.
	// templatePolling: a read of the status is scheduled (while a
	// template is being built).
	templateNote    string
	templatePolling bool

	// pool is the supervisor's warm pool as last read (poolKnown: a
	// status has been read). One status read at a time: statusAgain asks
	// for one more after the one in flight. statusTicks counts the ticks
	// since the last read began.
	pool          sessions.PoolStatus
	poolKnown     bool
	statusReading bool
	statusAgain   bool
	statusTicks   int

	quitting bool
}

// preview is the last screen fetched for the previewed terminal.
type preview struct {
	session string // the row's key
	pty     uint64
	screen  sessions.Screen
	lines   []string // styled rows of the screen
	err     error
}

// New returns a dashboard backed by b alone. ctx bounds every request
// it makes.
func New(ctx context.Context, b Backend, opts Options) *Model {
	return NewHosts(ctx, []Host{{Name: DefaultHost, Backend: b, Attach: opts.Attach}}, opts)
}

// NewHosts returns a dashboard over several hosts (the first is the
// default: its supervisor's status is the one the title shows). Their
// names must differ. Options.Attach is unused: each Host has its own.
func NewHosts(ctx context.Context, hosts []Host, opts Options) *Model {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.DefaultImage == "" {
		opts.DefaultImage = defaultImage()
	}
	f := textinput.New()
	f.Prompt = "/"
	f.Placeholder = "filter"
	f.CharLimit = 64
	m := &Model{
		opts:      opts,
		ctx:       ctx,
		st:        newStyles(),
		width:     80,
		height:    24,
		ptyChoice: map[string]uint64{},
		fetching:  map[string]bool{},
		filter:    f,
	}
	for _, h := range hosts {
		m.hosts = append(m.hosts, &host{Host: h, multi: len(hosts) > 1, backoff: minBackoff})
	}
	if m.opts.Host == "" || m.hostNamed(m.opts.Host) == nil {
		m.opts.Host = hosts[0].Name
	}
	m.summarize()
	return m
}

func defaultImage() string {
	if img := os.Getenv("GONDOLIN_DEFAULT_IMAGE"); img != "" {
		return img
	}
	return "default:latest"
}

// Messages from commands back to Update.
type (
	statusMsg struct {
		st  sessions.SupervisorStatus
		err error
	}
	templatesAgainMsg struct{}
	listMsg           struct {
		host *host
		list []sessions.Session
		err  error
	}
	screenMsg struct {
		key    string // the row's
		pty    uint64
		screen sessions.Screen
		err    error
	}
	eventsOpenMsg struct {
		host *host
		ch   <-chan sessions.Event
		err  error
	}
	eventsMsg struct {
		host   *host
		ch     <-chan sessions.Event
		events []sessions.Event
		closed bool
	}
	// inspectMsg runs a function on the model inside the program's
	// goroutine: tests read the model through it without racing.
	inspectMsg   func(*Model)
	reconnectMsg struct{ host *host }
	relistMsg    struct{ host *host }
	tickMsg      struct{}
	usageMsg     struct{}
	clearStatus  struct{ id int }
	// doneMsg reports an action: ok (with text) or failed.
	doneMsg struct {
		text string
		err  error
		// refresh: re-list sessions afterwards.
		refresh bool
		// selectKey selects this row once it is listed.
		selectKey string
		// pty previews this terminal of selectKey's session.
		pty uint64
	}
	attachDoneMsg struct {
		ref string
		pty uint64
		res sessions.AttachResult
		err error
	}
)

const (
	minBackoff     = 250 * time.Millisecond
	maxBackoff     = 10 * time.Second
	requestTimeout = 10 * time.Second
	createTimeout  = 3 * time.Minute // a create boots a VM
	// maxDrain bounds how many queued events one message carries, so a
	// burst becomes one re-list instead of hundreds.
	maxDrain = 256
)

// Init starts the first list and the event stream.
func (m *Model) Init() tea.Cmd {
	// The supervisor's status is read once the first list is in.
	cmds := []tea.Cmd{tick()}
	for _, h := range m.hosts {
		h.listing = true
		cmds = append(cmds, m.listCmd(h), m.openEvents(h))
	}
	m.summarize()
	if m.opts.UsageRefresh > 0 {
		cmds = append(cmds, tea.Tick(m.opts.UsageRefresh, func(time.Time) tea.Msg { return usageMsg{} }))
	}
	return tea.Batch(cmds...)
}

// tick redraws uptimes; it is cheap and touches no backend (every
// statusEvery ticks, Update reads the supervisor's status).
func tick() tea.Cmd {
	return tea.Tick(time.Second, func(time.Time) tea.Msg { return tickMsg{} })
}

func (m *Model) reqCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(m.ctx, requestTimeout)
}

var contextWithTimeout = context.WithTimeout

func (m *Model) listCmd(h *host) tea.Cmd {
	return func() tea.Msg {
		ctx, cancel := m.reqCtx()
		defer cancel()
		list, err := h.Backend.List(ctx, true)
		return listMsg{host: h, list: list, err: err}
	}
}

// refresh lists every host's sessions again.
func (m *Model) refresh() tea.Cmd {
	var cmds []tea.Cmd
	for _, h := range m.hosts {
		cmds = append(cmds, m.refreshHost(h))
	}
	return tea.Batch(cmds...)
}

// refreshHost lists h's sessions again, or marks that one more list is
// due when one is already in flight.
func (m *Model) refreshHost(h *host) tea.Cmd {
	if h.listing {
		h.listAgain = true
		return nil
	}
	h.listing = true
	m.summarize()
	return m.listCmd(h)
}

// readStatus reads the supervisor's status (its templates and warm
// pool), when the backend reports one, or marks that one more read is
// due when one is already in flight.
func (m *Model) readStatus() tea.Cmd {
	sb, ok := m.hosts[0].Backend.(StatusBackend)
	if !ok {
		return nil
	}
	if m.statusReading {
		m.statusAgain = true
		return nil
	}
	m.statusReading = true
	m.statusTicks = 0
	return func() tea.Msg {
		ctx, cancel := m.reqCtx()
		defer cancel()
		st, err := sb.Status(ctx)
		return statusMsg{st: st, err: err}
	}
}

// statusEvery is how many ticks (seconds) the dashboard lets pass
// without reading the supervisor's status. Besides, it reads it after
// every list of the sessions (so at the cadence of session events, the
// usage ones every few seconds while a session is live): a one-shot
// exec claiming a warm pool VM, or the pool warming one, sends no event.
const statusEvery = 5

// safeSession escapes what a session's strings may carry that a guest or
// a script chose (a label, a stale reason quoting the guest, terminal
// commands), so that the dashboard never prints it raw (termsafe).
func safeSession(s *sessions.Session) {
	for _, f := range []*string{&s.ID, &s.Name, &s.Label, &s.Reason, &s.Phase, &s.Image, &s.Policy} {
		*f = termsafe.String(*f)
	}
	for i := range s.Errors {
		s.Errors[i] = termsafe.String(s.Errors[i])
	}
	for i := range s.PTYs {
		for j := range s.PTYs[i].Argv {
			s.PTYs[i].Argv[j] = termsafe.String(s.PTYs[i].Argv[j])
		}
	}
}

// templateNote is the one line the dashboard shows about templates: one
// being built, or one that broke and has not been made again. A broken
// template is history once its key, or its image and shape under another
// key (a rebuilt image, a new QEMU), has a ready template newer than the
// breakage.
func templateNote(list []vm.TemplateInfo) string {
	name := func(t vm.TemplateInfo) string {
		if t.Label != "" {
			return t.Label
		}
		return t.Key
	}
	same := func(a, b vm.TemplateInfo) bool {
		return a.Key == b.Key || (a.Label != "" && a.Label == b.Label && a.CPUs == b.CPUs && a.MemoryMiB == b.MemoryMiB && a.Network == b.Network)
	}
	brokeBefore := map[string]bool{}
	for _, t := range list {
		if t.State == vm.TemplateBroken {
			brokeBefore[t.Key] = true
		}
	}
	for _, t := range list {
		if t.State == vm.TemplateBuilding {
			if brokeBefore[t.Key] {
				return "template " + name(t) + ": rebuilding"
			}
			return "template " + name(t) + ": building"
		}
	}
	for _, b := range list { // newest broken first
		if b.State != vm.TemplateBroken {
			continue
		}
		fixed := false
		for _, t := range list {
			if t.State == vm.TemplateReady && same(t, b) && (t.Key == b.Key || t.Built.After(b.Broken)) {
				fixed = true
			}
		}
		if !fixed {
			return termsafe.String("template " + name(b) + " broke (new VMs boot cold until it is rebuilt): " + oneLine(b.Reason))
		}
	}
	return ""
}

// templatePoll is how often the dashboard reads the templates again
// while one is being built: a build in another process sends no event.
const templatePoll = 2 * time.Second

func (m *Model) openEvents(h *host) tea.Cmd {
	return func() tea.Msg {
		ch, err := h.Backend.Events(m.ctx)
		return eventsOpenMsg{host: h, ch: ch, err: err}
	}
}

// waitEvents blocks for h's next event, then takes whatever else is
// already queued.
func waitEvents(h *host, ch <-chan sessions.Event) tea.Cmd {
	return func() tea.Msg {
		batch, closed := drain(ch)
		return eventsMsg{host: h, ch: ch, events: batch, closed: closed}
	}
}

// drain blocks for one value from ch, then takes up to maxDrain that are
// already queued; closed says ch was closed.
func drain[T any](ch <-chan T) (batch []T, closed bool) {
	v, ok := <-ch
	if !ok {
		return nil, true
	}
	batch = []T{v}
	for len(batch) < maxDrain {
		select {
		case v, ok := <-ch:
			if !ok {
				return batch, true
			}
			batch = append(batch, v)
		default:
			return batch, false
		}
	}
	return batch, false
}

// Update handles a message.
func (m *Model) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case tea.WindowSizeMsg:
		m.width, m.height = msg.Width, msg.Height
		m.clampScroll()
		return m, nil
	case listMsg:
		return m, m.onList(msg)
	case statusMsg:
		return m, m.onStatus(msg)
	case templatesAgainMsg:
		m.templatePolling = false
		return m, m.readStatus()
	case screenMsg:
		return m, m.onScreen(msg)
	case eventsOpenMsg:
		h := msg.host
		if msg.err != nil {
			return m, m.eventsDown(h, msg.err.Error())
		}
		h.events, h.eventsUp, h.eventsNote = msg.ch, true, ""
		h.backoff = minBackoff
		m.summarize()
		// Events may have been missed while the stream was down (the
		// list, once in, reads the status again too): this host's list,
		// and the preview if it shows one of this host's terminals.
		cmds := []tea.Cmd{waitEvents(h, msg.ch), m.refreshHost(h)}
		if s, ok := m.current(); ok && s.host == h {
			cmds = append(cmds, m.fetchPreview(true))
		}
		return m, tea.Batch(cmds...)
	case eventsMsg:
		if msg.ch != msg.host.events {
			return m, nil
		}
		cmd := m.onEvents(msg.host, msg.events)
		if msg.closed {
			return m, tea.Batch(cmd, m.eventsDown(msg.host, "the supervisor's event stream ended"))
		}
		return m, tea.Batch(cmd, waitEvents(msg.host, msg.ch))
	case reconnectMsg:
		return m, m.openEvents(msg.host)
	case relistMsg:
		msg.host.retrying = false
		return m, m.refreshHost(msg.host)
	case tickMsg:
		m.statusTicks++
		if m.statusTicks >= statusEvery {
			return m, tea.Batch(tick(), m.readStatus())
		}
		return m, tick()
	case usageMsg:
		var cmd tea.Cmd
		if m.anyLive() {
			cmd = m.refresh()
		}
		return m, tea.Batch(cmd, tea.Tick(m.opts.UsageRefresh, func(time.Time) tea.Msg { return usageMsg{} }))
	case clearStatus:
		if msg.id == m.statusID {
			m.status = ""
		}
		return m, nil
	case doneMsg:
		var cmds []tea.Cmd
		if msg.err != nil {
			cmds = append(cmds, m.setError(msg.err))
		} else if msg.text != "" {
			cmds = append(cmds, m.setStatus(msg.text))
		}
		if msg.selectKey != "" {
			m.selected, m.picked = msg.selectKey, true
			if msg.pty != 0 {
				m.ptyChoice[msg.selectKey] = msg.pty
			}
		}
		if msg.refresh {
			cmds = append(cmds, m.refresh(), m.fetchPreview(true))
		}
		return m, tea.Batch(cmds...)
	case attachDoneMsg:
		return m, m.onAttachDone(msg)
	case createDoneMsg:
		return m, m.onCreateDone(msg)
	case snapDoneMsg:
		return m, m.onSnapDone(msg)
	case inspectMsg:
		msg(m)
		return m, nil
	}
	if m.dialog != nil {
		done, cmd := m.dialog.update(m, msg)
		if done {
			m.dialog = nil
		}
		return m, cmd
	}
	if msg, ok := msg.(tea.KeyPressMsg); ok {
		return m, m.onKey(msg)
	}
	if m.filtering {
		var cmd tea.Cmd
		m.filter, cmd = m.filter.Update(msg)
		return m, cmd
	}
	return m, nil
}

// eventsDown notes that h's event stream is down and subscribes again
// after a backoff. With several hosts, it is also why h's rows say it is
// unreachable, until it answers again.
func (m *Model) eventsDown(h *host, why string) tea.Cmd {
	h.events, h.eventsUp = nil, false
	h.eventsNote = oneLine(why)
	m.summarize()
	m.rebuild()
	d := h.backoff
	h.backoff = min(h.backoff*2, maxBackoff)
	return tea.Tick(d, func(time.Time) tea.Msg { return reconnectMsg{host: h} })
}

func (m *Model) onEvents(h *host, events []sessions.Event) tea.Cmd {
	relist, repaint, templates := false, false, false
	_, selPTY := m.previewTarget()
	cur, _ := m.current()
	onSel := func(e sessions.Event) bool { return cur.host == h && e.Session == cur.ID }
	for _, e := range events {
		switch e.Type {
		case sessions.EventTemplate:
			// The title shows the default host's templates only.
			templates = h == m.hosts[0]
		case sessions.EventPTYPaint:
			if onSel(e) && (e.PTY == selPTY || selPTY == 0) {
				repaint = true
			}
		case sessions.EventPTYOpen, sessions.EventPTYExit:
			relist = true
			if onSel(e) {
				repaint = true
			}
		default:
			if strings.HasPrefix(e.Type, "session.") {
				relist = true
			}
		}
		if m.dialog != nil {
			if d, ok := m.dialog.(eventFollower); ok && d.host() == h {
				d.onEvent(m, e)
			}
		}
	}
	var cmds []tea.Cmd
	if relist {
		cmds = append(cmds, m.refreshHost(h))
	}
	if templates {
		cmds = append(cmds, m.readStatus())
	}
	if repaint {
		cmds = append(cmds, m.fetchPreview(true))
	}
	if m.dialog != nil {
		if d, ok := m.dialog.(eventFollower); ok {
			cmds = append(cmds, d.afterEvents(m))
		}
	}
	return tea.Batch(cmds...)
}

// eventFollower is a dialog that reacts to the events of its session's
// host.
type eventFollower interface {
	host() *host
	onEvent(m *Model, e sessions.Event)
	afterEvents(m *Model) tea.Cmd
}

func (m *Model) onList(msg listMsg) tea.Cmd {
	h := msg.host
	h.listing = false
	var cmds []tea.Cmd
	if h.listAgain {
		h.listAgain = false
		h.listing = true
		cmds = append(cmds, m.listCmd(h))
	}
	if msg.err != nil {
		// Its rows stay, marked unreachable (with several hosts); the
		// next list comes when its events reconnect, or after a backoff
		// when they are still up.
		h.err = msg.err
		if h.eventsUp && !h.retrying && !h.listing {
			h.retrying = true
			d := h.backoff
			h.backoff = min(h.backoff*2, maxBackoff)
			cmds = append(cmds, tea.Tick(d, func(time.Time) tea.Msg { return relistMsg{host: h} }))
		}
		m.summarize()
		m.rebuild()
		return tea.Batch(cmds...)
	}
	h.err = nil
	h.loaded = true
	if h.eventsUp {
		h.backoff = minBackoff
	}
	if m.creates > 0 {
		known := map[string]bool{}
		for _, s := range h.list {
			known[s.ID] = true
		}
		for _, s := range msg.list {
			if s.State == sessions.Creating && !known[s.ID] {
				m.selected, m.picked = rowKey(h, s.ID), true
			}
		}
	}
	h.list = msg.list
	for i := range h.list {
		safeSession(&h.list[i])
	}
	m.summarize()
	m.rebuild()
	cmds = append(cmds, m.fetchPreview(false))
	if h == m.hosts[0] { // the status the title shows is this machine's
		cmds = append(cmds, m.readStatus())
	}
	return tea.Batch(cmds...)
}

// rebuild merges the hosts' lists into the table's rows.
func (m *Model) rebuild() {
	m.all = m.all[:0]
	multi := m.multi()
	for _, h := range m.hosts {
		down := ""
		if multi {
			down = h.unreachable()
		}
		for _, s := range h.list {
			m.all = append(m.all, row{Session: s, host: h, down: down})
		}
		if multi && len(h.list) == 0 && (down != "" || !h.loaded) {
			m.all = append(m.all, row{host: h, down: down})
		}
	}
	slices.SortStableFunc(m.all, func(a, b row) int {
		// Live (and being made) first, then stale, then stopped, then
		// unreachable; newest first within.
		if c := cmp.Compare(a.rank(), b.rank()); c != 0 {
			return c
		}
		return b.Created.Compare(a.Created)
	})
	m.applyFilter()
}

// summarize sets the model's summary of its hosts' states. With one
// host they are that host's; with several, loaded means some host has
// answered or failed (the others show as placeholder rows meanwhile:
// a slow host holds up nobody), and eventsUp that every host's events
// are followed.
func (m *Model) summarize() {
	multi := m.multi()
	m.loaded, m.listing, m.eventsUp, m.eventsNote = !multi, false, true, ""
	for _, h := range m.hosts {
		if multi {
			m.loaded = m.loaded || h.loaded || h.err != nil
		} else {
			m.loaded = h.loaded
		}
		m.listing = m.listing || h.listing
		m.eventsUp = m.eventsUp && h.eventsUp
		if !h.eventsUp && h.eventsNote != "" && m.eventsNote == "" {
			m.eventsNote = h.eventsNote
		}
	}
	m.listErr = nil
	if !m.multi() {
		m.listErr = m.hosts[0].err
	}
}

// onStatus takes in a read of the supervisor's status. A failed read
// keeps what the last one said.
func (m *Model) onStatus(msg statusMsg) tea.Cmd {
	m.statusReading = false
	var cmds []tea.Cmd
	if m.statusAgain {
		m.statusAgain = false
		cmds = append(cmds, m.readStatus())
	}
	if msg.err != nil {
		return tea.Batch(cmds...)
	}
	m.pool, m.poolKnown = msg.st.Pool, true
	m.templateNote = templateNote(msg.st.Templates)
	if strings.HasSuffix(m.templateNote, "building") && !m.templatePolling {
		m.templatePolling = true
		cmds = append(cmds, tea.Tick(templatePoll, func(time.Time) tea.Msg { return templatesAgainMsg{} }))
	}
	return tea.Batch(cmds...)
}

// applyFilter recomputes the visible rows and keeps the selection on the
// same session when it is still visible.
func (m *Model) applyFilter() {
	q := strings.TrimSpace(m.filter.Value())
	m.visible = m.visible[:0]
	for i, r := range m.all {
		if matches(r, q) {
			m.visible = append(m.visible, i)
		}
	}
	m.cursor = 0
	for i, idx := range m.visible {
		if m.picked && m.all[idx].key() == m.selected {
			m.cursor = i
			break
		}
	}
	if len(m.visible) > 0 {
		m.selected = m.all[m.visible[m.cursor]].key()
	}
	m.clampScroll()
}

// matches reports whether a row passes the filter: every word of q
// must appear (case-insensitively) in its session's name, ID, image,
// state, label or reason, or its host's name (with several hosts; an
// unreachable host's rows match "unreachable").
func matches(r row, q string) bool {
	if q == "" {
		return true
	}
	s := r.Session
	words := []string{s.Name, s.ID, s.Image, string(s.State), s.Label, s.Reason, s.Phase}
	if r.host != nil && r.host.multi {
		words = append(words, r.host.Name)
	}
	if r.down != "" {
		words = append(words, "unreachable", r.down)
	}
	hay := strings.ToLower(strings.Join(words, " "))
	for _, w := range strings.Fields(strings.ToLower(q)) {
		if !strings.Contains(hay, w) {
			return false
		}
	}
	return true
}

// current returns the selected row.
func (m *Model) current() (row, bool) {
	if m.cursor < 0 || m.cursor >= len(m.visible) {
		return row{}, false
	}
	return m.all[m.visible[m.cursor]], true
}

func (m *Model) anyLive() bool {
	for _, s := range m.all {
		if s.State == sessions.Live && s.down == "" {
			return true
		}
	}
	return false
}

// ptyFor is the terminal the preview shows for s: the one the user chose
// if it still exists, else the most recent running one (what attach
// picks), else the most recent one.
func (m *Model) ptyFor(s row) (sessions.PTY, bool) {
	if id, ok := m.ptyChoice[s.key()]; ok {
		for _, p := range s.PTYs {
			if p.ID == id {
				return p, true
			}
		}
	}
	for i := len(s.PTYs) - 1; i >= 0; i-- {
		if s.PTYs[i].Running {
			return s.PTYs[i], true
		}
	}
	if len(s.PTYs) > 0 {
		return s.PTYs[len(s.PTYs)-1], true
	}
	return sessions.PTY{}, false
}

// previewTarget is the row (its key) and terminal the preview should
// show. An unreachable host's row has none: its screen cannot be read.
func (m *Model) previewTarget() (string, uint64) {
	s, ok := m.current()
	if !ok {
		return "", 0
	}
	p, ok := m.ptyFor(s)
	if !ok || s.down != "" {
		return s.key(), 0
	}
	return s.key(), p.ID
}

// previewKey names a terminal of a row's session.
func previewKey(key string, pty uint64) string { return key + "/" + strconv.FormatUint(pty, 10) }

// fetchPreview asks for the previewed terminal's screen when the preview
// shows another terminal, or always with force (its screen changed). One
// request per terminal is in flight at a time; a newer need for the same
// one waits for it.
func (m *Model) fetchPreview(force bool) tea.Cmd {
	id, pty := m.previewTarget()
	if id == "" || pty == 0 {
		m.preview = preview{session: id}
		return nil
	}
	if !force && m.preview.session == id && m.preview.pty == pty {
		return nil
	}
	target := previewKey(id, pty)
	if m.fetching[target] {
		m.wantFetch = true
		return nil
	}
	m.fetching[target], m.wantFetch = true, false
	s, _ := m.current()
	return func() tea.Msg {
		ctx, cancel := m.reqCtx()
		defer cancel()
		scr, err := s.host.Backend.Screen(ctx, s.ID, pty)
		return screenMsg{key: id, pty: pty, screen: scr, err: err}
	}
}

func (m *Model) onScreen(msg screenMsg) tea.Cmd {
	delete(m.fetching, previewKey(msg.key, msg.pty))
	id, pty := m.previewTarget()
	if id != msg.key || pty != msg.pty {
		// An answer for a terminal no longer previewed (a slow host's,
		// after the user moved on): the current one was asked for when
		// the selection moved, or is asked for now.
		if m.preview.session != id || m.preview.pty != pty {
			return m.fetchPreview(false)
		}
		return nil
	}
	m.preview = preview{session: msg.key, pty: msg.pty, screen: msg.screen, err: msg.err}
	if msg.err == nil {
		m.preview.lines = screenLines(msg.screen)
	}
	if m.wantFetch {
		return m.fetchPreview(true)
	}
	return nil
}

func (m *Model) setStatus(text string) tea.Cmd {
	// The one way in for the status line's text, which may quote a
	// supervisor on another machine (a name it returned): made safe.
	m.status, m.statusErr = termsafe.String(text), false
	m.statusID++
	id := m.statusID
	return tea.Tick(5*time.Second, func(time.Time) tea.Msg { return clearStatus{id: id} })
}

func (m *Model) setError(err error) tea.Cmd {
	m.status, m.statusErr = oneLine(err.Error()), true
	m.statusID++
	id := m.statusID
	return tea.Tick(10*time.Second, func(time.Time) tea.Msg { return clearStatus{id: id} })
}

func oneLine(s string) string {
	// An error may quote another machine (a context's supervisor, its
	// ssh) or a guest: shown as text, never as terminal control.
	return termsafe.String(strings.Join(strings.Fields(s), " "))
}

// select moves the cursor to visible row i.
func (m *Model) selectRow(i int) tea.Cmd {
	if len(m.visible) == 0 {
		return nil
	}
	m.cursor = max(0, min(i, len(m.visible)-1))
	m.selected, m.picked = m.all[m.visible[m.cursor]].key(), true
	m.clampScroll()
	return m.fetchPreview(false)
}

// clampScroll keeps the cursor inside the table's window.
func (m *Model) clampScroll() {
	rows := m.layout().tableRows
	if rows < 1 {
		rows = 1
	}
	if m.cursor < m.offset {
		m.offset = m.cursor
	}
	if m.cursor >= m.offset+rows {
		m.offset = m.cursor - rows + 1
	}
	m.offset = max(0, min(m.offset, len(m.visible)-rows))
}
