"""
A table-driven finite state machine (R1 `ion.util.fsm`).

Transitions map (input symbol, state) to (action, next state).  Lookup
order: the exact pair, then the state's "any input" transition, then the
default transition; with none of them the input is an `ExceptionFSM`.
`process()` runs the action as `action(fsm)`; state objects only look the
transition up and run their own actions (see `ion.util.state_object`).
"""

from ion.core.exception import IonError


class ExceptionFSM(IonError):
    """An input the machine has no transition for in its current state."""


class FSM:
    """States and inputs are any hashable values; `memory` is free for the actions' use."""

    def __init__(self, initial_state, memory=None):
        self.state_transitions = {}
        self.state_transitions_any = {}
        self.default_transition = None
        self.initial_state = initial_state
        self.current_state = initial_state
        self.input_symbol = None
        self.action = None
        self.next_state = None
        self.memory = memory

    def reset(self):
        """Back to the initial state, forgetting the last input."""
        self.current_state = self.initial_state
        self.input_symbol = None

    def add_transition(self, input_symbol, state, action=None, next_state=None):
        """`input_symbol` in `state` runs `action` and moves to `next_state` (None: stay)."""
        self.state_transitions[(input_symbol, state)] = (action, state if next_state is None else next_state)

    def add_transition_list(self, list_input_symbols, state, action=None, next_state=None):
        for input_symbol in list_input_symbols:
            self.add_transition(input_symbol, state, action, next_state)

    def add_transition_any(self, state, action=None, next_state=None):
        """Any input in `state` without its own transition."""
        self.state_transitions_any[state] = (action, state if next_state is None else next_state)

    def set_default_transition(self, action, next_state):
        """Any input in any state without another transition (next_state None: stay)."""
        self.default_transition = (action, next_state)

    def get_transition(self, input_symbol, state):
        """(action, next_state) for `input_symbol` in `state`, or ExceptionFSM."""
        found = self.state_transitions.get((input_symbol, state)) or self.state_transitions_any.get(state)
        if found is not None:
            return found
        if self.default_transition is not None:
            action, next_state = self.default_transition
            return action, state if next_state is None else next_state
        raise ExceptionFSM("no transition for input %r in state %r" % (input_symbol, state))

    def process(self, input_symbol):
        """Run the transition for `input_symbol`; returns the action's result."""
        self.input_symbol = input_symbol
        self.action, self.next_state = self.get_transition(input_symbol, self.current_state)
        result = self.action(self) if self.action is not None else None
        self.current_state = self.next_state
        self.next_state = None
        return result

    def process_list(self, input_symbols):
        for input_symbol in input_symbols:
            self.process(input_symbol)
