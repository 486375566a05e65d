/* >>data */
