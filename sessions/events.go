package sessions

import "sync"

// eventBuffer is how far a follower may fall behind before it is cut off
// (it then reconnects and lists afresh); the supervisor never waits for
// a slow follower.
const eventBuffer = 1024

// broker fans events out to followers.
type broker struct {
	mu   sync.Mutex
	subs map[chan Event]struct{}
}

func newBroker() *broker { return &broker{subs: map[chan Event]struct{}{}} }

func (b *broker) subscribe() chan Event {
	ch := make(chan Event, eventBuffer)
	b.mu.Lock()
	b.subs[ch] = struct{}{}
	b.mu.Unlock()
	return ch
}

func (b *broker) unsubscribe(ch chan Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.subs[ch]; ok {
		delete(b.subs, ch)
		close(ch)
	}
}

func (b *broker) publish(e Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for ch := range b.subs {
		select {
		case ch <- e:
		default:
			delete(b.subs, ch)
			close(ch)
		}
	}
}

func (b *broker) followers() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.subs)
}
