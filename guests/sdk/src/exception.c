/* Exception dispatch: registered handlers first, else the SDK's report-and-halt. */
#include <pvkit/exception.h>
#include <pvkit/runtime.h>

static exc_sync_handler_t sync_handler;
static exc_irq_handler_t irq_handler;

void exc_set_sync_handler(exc_sync_handler_t handler) { sync_handler = handler; }
void exc_set_irq_handler(exc_irq_handler_t handler) { irq_handler = handler; }

void exception_dispatch(struct exc_frame *frame)
{
    unsigned kind = frame->vector % 4;
    if (kind == EXC_IRQ && irq_handler) {
        irq_handler(frame);
        return;
    }
    if (kind == EXC_SYNC && sync_handler && sync_handler(frame))
        return;
    exception_report(frame->vector, frame->esr, frame->elr, frame->far);
    halt();
}
