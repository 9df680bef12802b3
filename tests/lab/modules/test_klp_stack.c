// SPDX-License-Identifier: GPL-2.0
/*
 * klpfleet lab: a second, non-replace patch of the function test_klp_livepatch patches (cmdline_proc_show), so
 * the two stack: the one enabled last is the one whose code runs.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>

static int stacked_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s: %s\n", THIS_MODULE->name, "stacked on top");
	return 0;
}

static struct klp_func funcs[] = {
	{ .old_name = "cmdline_proc_show", .new_func = stacked_cmdline_proc_show },
	{}
};

static struct klp_object objs[] = {
	{ .name = NULL, .funcs = funcs },
	{}
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
};

static int __init lab_stack_init(void)
{
	return klp_enable_patch(&patch);
}

static void __exit lab_stack_exit(void)
{
}

module_init(lab_stack_init);
module_exit(lab_stack_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("klpfleet lab: a second patch of cmdline_proc_show, stacked");
